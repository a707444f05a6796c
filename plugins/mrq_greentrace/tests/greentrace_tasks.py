"""Tasks for the greentrace tests (the workers find this module through PYTHONPATH)."""

from __future__ import annotations

import time

import gevent
from gevent import monkey
from mrq.context import subpool_map

#: time.sleep as it was before gevent patched it: a call that blocks the whole process, as a C library
#: call, a non-patched driver or a CPU loop would.
blocking_sleep = monkey.get_original("time", "sleep")


def burn(seconds: float = 0.3) -> int:
    """Use ``seconds`` of CPU without yielding."""
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        n += 1
    return n


def nap(seconds: float = 1.0) -> bool:
    """Wait ``seconds`` cooperatively: other jobs run meanwhile."""
    gevent.sleep(seconds)
    return True


def block(seconds: float = 0.3) -> bool:
    blocking_sleep(seconds)  # THE BLOCKING LINE
    return True


def burn_in_subpool(seconds: float = 0.1, n: int = 3) -> int:
    """``n`` subpool greenlets each burning ``seconds`` of CPU."""
    return len(subpool_map(n, lambda _: burn(seconds), range(n)))


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def profiled_work(n: int = 18) -> int:
    gevent.sleep(0.01)
    return fib(n)
