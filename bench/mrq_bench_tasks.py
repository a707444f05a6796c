"""The job of ``bench/bench_mrq.py``: a no-op, as in the peers harness (``../shared/bench/apps``).

The worker runs with ``cwd=bench/``, so the task path is ``mrq_bench_tasks.noop``.
"""


def noop(x: int) -> int:
    """Return ``x + 1`` (the benchmark checks every result)."""
    return x + 1


def log_and_fail(x: int) -> None:
    """Log a line (stored per job in mrq_logs) and fail (a traceback stored with the job)."""
    from mrq.context import log

    log.info("job %d is about to fail", x)
    raise ValueError(f"failure {x}")
