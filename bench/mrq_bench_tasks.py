"""The job of ``bench/bench_mrq.py``: a no-op, as in the peers harness (``../shared/bench/apps``).

The worker runs with ``cwd=bench/``, so the task path is ``mrq_bench_tasks.noop``.
"""


def noop(x: int) -> int:
    """Return ``x + 1`` (the benchmark checks every result)."""
    return x + 1
