"""Allocation sites that keep growing (``--memtrace_mode tracemalloc``): works with any number of greenlets.

tracemalloc records the line that allocated each live memory block. Every report interval a snapshot is
compared with the first one (the baseline) and with the previous one: a site *keeps growing* when its
retained size grew in at least ``min_intervals`` intervals without shrinking since, and is above the
baseline. What one job allocates and frees, or what warms up once (imports, caches), is not reported.
"""

from __future__ import annotations

import linecache
import os
import time
import tracemalloc
from typing import Any

__all__ = ["SiteTracker"]

_IGNORED = [
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, linecache.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
    tracemalloc.Filter(False, os.path.join(os.path.dirname(__file__), "*")),
]


class SiteTracker:
    """Snapshots of tracemalloc compared across the process's life.

    :param limit: sites reported per update.
    :param min_intervals: growths needed (without shrinking since) for a site to count as growing.
    """

    def __init__(self, limit: int = 10, min_intervals: int = 3) -> None:
        self.limit = limit
        self.min_intervals = min_intervals
        self.baseline: dict[tuple[str, int], tuple[int, int]] | None = None
        self.previous: dict[tuple[str, int], tuple[int, int]] = {}
        self.streak: dict[tuple[str, int], int] = {}
        self.snapshots = 0
        self.last_ms = 0.0
        self.traced = 0
        self.sites: list[dict[str, Any]] = []

    @staticmethod
    def start(frames: int = 1) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(frames)

    def update(self) -> list[dict[str, Any]]:
        """Take a snapshot; return (and keep in ``sites``) the sites that keep growing, largest growth first."""
        started = time.perf_counter()
        snapshot = tracemalloc.take_snapshot().filter_traces(_IGNORED)
        now: dict[tuple[str, int], tuple[int, int]] = {}
        for stat in snapshot.statistics("lineno"):
            frame = stat.traceback[0]
            now[(frame.filename, frame.lineno)] = (stat.size, stat.count)
        del snapshot
        self.snapshots += 1
        self.traced = tracemalloc.get_traced_memory()[0]
        if self.baseline is None:
            self.baseline, self.previous = now, now
            self.last_ms = (time.perf_counter() - started) * 1000
            return []
        streak = {}
        for site, (size, _count) in now.items():
            before = self.previous.get(site, (0, 0))[0]
            run = self.streak.get(site, 0)
            streak[site] = run + 1 if size > before else (run if size == before else 0)
        self.streak, self.previous = streak, now
        growing = []
        for site, run in streak.items():
            size, count = now[site]
            base_size, base_count = self.baseline.get(site, (0, 0))
            if run >= self.min_intervals and size > base_size:
                growing.append({"site": f"{site[0]}:{site[1]}", "code": linecache.getline(*site).strip(),
                                "size": size, "count": count, "growth": size - base_size,
                                "count_growth": count - base_count, "intervals": run})
        growing.sort(key=lambda s: -s["growth"])
        self.sites = growing[:self.limit]
        self.last_ms = (time.perf_counter() - started) * 1000
        return self.sites
