"""Counts that would scan the jobs collection, computed at most once per ``ttl`` seconds per process.

Every request of the process shares the last result. When it is older than ``ttl``, the request that
notices starts one recomputation in the background and is answered at once with the previous value (its
age goes with it, and the pages show it); only the first request of a key waits. Requests that arrive
while a computation runs never start another one. So however many browsers poll, each aggregation runs at
most once per ``ttl`` per dashboard process, and pages do not wait for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SharedCache", "Cached"]

log = logging.getLogger("mrq.dashboard")


@dataclass(frozen=True)
class Cached:
    value: Any
    computed_at: float  # unix time
    seconds: float      # how long the computation took

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.computed_at)

    def meta(self) -> dict[str, Any]:
        return {"computed_at": self.computed_at, "age": round(self.age, 1), "took": round(self.seconds, 3)}


class SharedCache:
    """Values by key, recomputed in the background once older than ``ttl`` seconds (0 = never cached)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = float(ttl)
        self._values: dict[str, Cached] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._refreshing: set[str] = set()
        self._guard = threading.Lock()
        self.computations = 0

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _compute(self, key: str, compute: Callable[[], Any]) -> Cached:
        started = time.perf_counter()
        value = compute()
        cached = Cached(value, time.time(), time.perf_counter() - started)
        self.computations += 1
        self._values[key] = cached
        return cached

    def get(self, key: str, compute: Callable[[], Any]) -> Cached:
        current = self._values.get(key)
        if self.ttl <= 0:
            return self._compute(key, compute)
        if current is not None:
            if current.age >= self.ttl:
                self._refresh_in_background(key, compute)
            return current
        with self._lock(key):  # the first request computes; the ones arriving meanwhile wait for it
            current = self._values.get(key)
            return current if current is not None else self._compute(key, compute)

    def peek(self, key: str) -> Cached | None:
        """The current value, however old, or ``None``: never computes (for optional uses such as estimates)."""
        return self._values.get(key)

    def _refresh_in_background(self, key: str, compute: Callable[[], Any]) -> None:
        with self._guard:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def run() -> None:
            try:
                with self._lock(key):
                    self._compute(key, compute)
            except Exception:  # the previous value stays; the next request after ttl tries again
                log.exception("Dashboard: recomputing %s failed", key)
                previous = self._values.get(key)
                if previous is not None:  # try again after another ttl, not on every request
                    self._values[key] = Cached(previous.value, time.time(), previous.seconds)
            finally:
                with self._guard:
                    self._refreshing.discard(key)

        threading.Thread(target=run, name=f"dashboard-cache-{key}", daemon=True).start()
