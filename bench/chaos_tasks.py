"""The job of ``bench/chaos.py``: records every execution in an append-only file, then returns its argument.

Each run appends ``S <i> <pid> <time>`` when it starts and ``E <i> <pid> <time>`` when it ends, with single
O_APPEND writes (which survive the process being killed), to the file named by ``$MRQ_CHAOS_RECORD``. The
worker runs with ``cwd=bench/``, so the task path is ``chaos_tasks.record``.
"""

from __future__ import annotations

import os
import random
import time

import gevent

_fd: int | None = None
_pid: int | None = None


def _write(line: str) -> None:
    global _fd, _pid
    if _pid != os.getpid():
        _fd = os.open(os.environ["MRQ_CHAOS_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _pid = os.getpid()
    assert _fd is not None
    os.write(_fd, line.encode())


def record(i: int, t: float = 0.02) -> int:
    """Run ``i``: record the start, work (yield) up to ``t`` seconds, record the end."""
    _write(f"S {i} {os.getpid()} {time.time():.6f}\n")
    gevent.sleep(random.random() * t)
    _write(f"E {i} {os.getpid()} {time.time():.6f}\n")
    return i
