"""Tasks for the memtrace tests (the workers find this module through PYTHONPATH)."""

from __future__ import annotations

import gevent


class Leaky:
    """A class of this module: easy to tell apart from everything else in the process."""

    def __init__(self, i: int) -> None:
        self.i = i
        self.payload = bytes(1000)  # THE LEAKED BUFFER (b"x" * 1000 would be one shared constant)


#: What the leaking task keeps forever.
KEPT: list[Leaky] = []


def leak(n: int = 1000, sleep: float = 0.0) -> int:
    KEPT.extend([Leaky(i) for i in range(n)])  # THE LEAKING LINE
    if sleep:
        gevent.sleep(sleep)
    return len(KEPT)


def noleak(n: int = 1000) -> int:
    made = [Leaky(i) for i in range(n)]
    return len(made)
