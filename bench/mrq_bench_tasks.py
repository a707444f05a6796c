"""The jobs of ``bench/bench_mrq.py``: a no-op and an I/O-bound one, stamped like the peers' job.

The worker runs with ``cwd=bench/``, so the task paths are ``mrq_bench_tasks.noop`` and ``mrq_bench_tasks.sleep``.
Each job appends ``"<arg> <start> <end>"`` (``time.time()``) to the file named by ``$BENCH_STAMP_FILE`` in one
``O_APPEND`` write, as the peers' ``apps/bench_common.noop`` does: the same few microseconds for every system, and
the processing window (first start -> last end) measured the same way. Without ``$BENCH_STAMP_FILE`` nothing is
written.
"""

from __future__ import annotations

import os
import time

import gevent

_STAMP_FILE = os.environ.get("BENCH_STAMP_FILE")
_fd: int | None = None


def stamp(x: int, t0: float) -> None:
    global _fd
    if not _STAMP_FILE:
        return
    if _fd is None:
        _fd = os.open(_STAMP_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, b"%d %.6f %.6f\n" % (x, t0, time.time()))


def noop(x: int) -> int:
    """Return ``x + 1`` (the benchmark checks the results it can read)."""
    t0 = time.time()
    result = x + 1
    stamp(x, t0)
    return result


def sleep(x: int, seconds: float = 0.1) -> int:
    """An I/O-bound job: ``gevent.sleep(seconds)``, then ``x + 1``."""
    t0 = time.time()
    gevent.sleep(seconds)
    stamp(x, t0)
    return x + 1


def log_and_fail(x: int) -> None:
    """Log a line (stored per job in mrq_logs) and fail (a traceback stored with the job)."""
    from mrq.context import log

    log.info("job %d is about to fail", x)
    raise ValueError(f"failure {x}")
