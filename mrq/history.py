"""A worker's per-minute history, kept in memory and written with its report (``report["history"]``).

Each worker keeps, for its last :data:`MINUTES` minutes: the jobs it finished per minute by status, its
memory (RSS, MB) and CPU use (% of one core), and the size of its queues (ids waiting in Redis, sampled at
report time). The dashboard plots them; any script can read them from ``mrq_workers``.

Cost: nothing per job. The finished-job counts are differences of the worker's cumulative status counters
(``worker.counters``, which it keeps anyway) between two reports; the queue sizes are one pipelined Redis
call per report (``LLEN`` + ``ZCARD`` of at most :data:`MAX_QUEUES` queues); the document is bounded
(:data:`MINUTES` entries, one series per status seen and per sampled queue) and is written by the report
the worker makes anyway. Measured figures: docs/performance.md ("Worker history").

The stored form is columnar, one value per minute, oldest first::

    {"v": 1, "start": 1767225600,            # unix time of the first minute
     "done": {"success": [12, 40, ...], "failed": [0, 1, ...]},
     "rss": [81, 82, ...], "cpu": [3.5, 12.0, ...],          # MB; % of one core (null: no sample)
     "queues": {"default": [0, 250, ...]},                   # ids waiting (null: not sampled that minute)
     "recent": {"t": [1767229190, ...], "rss": [81, ...], "cpu": [3.5, ...]}}  # the last RECENT reports

``recent`` holds one sample per report (every ``--report_interval`` seconds), so that a worker started a minute
ago has more than one point to plot.

:func:`merge` adds the histories of several workers onto one time axis (done counts summed, queue
sizes as the largest sample, since workers of one queue see the same list).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mrq import status as st

__all__ = ["History", "merge", "MINUTES", "MAX_QUEUES", "RECENT"]

#: Minutes kept (two hours: the dashboard shows the last one).
MINUTES = 120
#: Queues whose size is sampled per worker (the first ones in its priority order).
MAX_QUEUES = 20
#: Reports whose memory and CPU are kept one by one (``recent``): 15 minutes at the default 10 s interval.
RECENT = 90


@dataclass
class _Minute:
    start: int
    done: dict[str, int] = field(default_factory=dict)
    rss: int | None = None
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    queues: dict[str, int] = field(default_factory=dict)


class History:
    """The per-minute history of one worker; :meth:`sample` is called at each report."""

    def __init__(self, minutes: int = MINUTES, max_queues: int = MAX_QUEUES,
                 clock: Callable[[], float] = time.time) -> None:
        self.minutes = max(1, int(minutes))
        self.max_queues = max(0, int(max_queues))
        self._clock = clock
        self._entries: deque[_Minute] = deque(maxlen=self.minutes)
        self._last_counts: dict[str, int] = {}
        self._last_cpu: float | None = None
        self._last_time: float | None = None
        self._recent: deque[tuple[int, int | None, float | None]] = deque(maxlen=RECENT)  # (time, rss, cpu %)

    def _bucket(self, now: float) -> _Minute:
        start = int(now // 60 * 60)
        if self._entries:
            last = self._entries[-1].start
            if last >= start:  # same minute (or the clock went back): keep adding to the last one
                return self._entries[-1]
            if start - last > 60 * self.minutes:
                self._entries.clear()
            else:
                for missing in range(last + 60, start, 60):  # minutes without a report: empty entries
                    self._entries.append(_Minute(missing))
        self._entries.append(_Minute(start))
        return self._entries[-1]

    def sample(self, counters: Mapping[str, int], rss_mb: int | None, cpu_seconds: float | None,
               queues: Sequence[str] = (),
               sizes: Callable[[Sequence[str]], Mapping[str, tuple[int, int]]] | None = None) -> dict[str, Any]:
        """Record one report and return the history document to write.

        :param counters: the worker's cumulative counters; the keys that are job statuses are read.
        :param rss_mb: memory now (MB). :param cpu_seconds: CPU time used by the process so far.
        :param queues: the worker's queues; the first :attr:`max_queues` are sampled with ``sizes``.
        :param sizes: :meth:`mrq.broker.Broker.sizes` (one pipelined call); if it raises, the minute has no
            queue sample (a report must not fail because Redis is away).
        """
        now = self._clock()
        bucket = self._bucket(now)
        for status in st.ALL_STATUSES:
            count = int(counters.get(status, 0))
            delta = count - self._last_counts.get(status, 0)
            if delta > 0:
                bucket.done[status] = bucket.done.get(status, 0) + delta
            self._last_counts[status] = count
        if rss_mb is not None:
            bucket.rss = int(rss_mb)
        cpu_percent: float | None = None
        if cpu_seconds is not None:
            if self._last_cpu is not None and self._last_time is not None and now > self._last_time:
                used = max(0.0, cpu_seconds - self._last_cpu)
                bucket.cpu_seconds += used
                bucket.wall_seconds += now - self._last_time
                cpu_percent = round(100 * used / (now - self._last_time), 1)
            self._last_cpu = cpu_seconds
        self._recent.append((int(now), int(rss_mb) if rss_mb is not None else None, cpu_percent))
        self._last_time = now
        wanted = list(queues)[:self.max_queues]
        if sizes is not None and wanted:
            try:
                bucket.queues = {q: int(v[0]) for q, v in sizes(wanted).items()}
            except Exception:  # noqa: BLE001 - Redis away: no queue sample this time
                pass
        return self.document()

    def document(self) -> dict[str, Any]:
        """The columnar form written in ``report["history"]`` (see the module docstring)."""
        entries = list(self._entries)
        statuses = sorted({s for e in entries for s in e.done})
        queues = sorted({q for e in entries for q in e.queues})
        return {
            "v": 1,
            "start": entries[0].start if entries else int(self._clock() // 60 * 60),
            "done": {s: [e.done.get(s, 0) for e in entries] for s in statuses},
            "rss": [e.rss for e in entries],
            "cpu": [round(100 * e.cpu_seconds / e.wall_seconds, 1) if e.wall_seconds else None for e in entries],
            "queues": {q: [e.queues.get(q) for e in entries] for q in queues},
            "recent": {"t": [r[0] for r in self._recent], "rss": [r[1] for r in self._recent],
                       "cpu": [r[2] for r in self._recent]},
        }


def merge(histories: Iterable[Mapping[str, Any] | None], minutes: int = 60, now: float | None = None) -> dict[str, Any]:
    """The last ``minutes`` minutes of several workers' histories on one axis.

    :return: ``{"start": unix minute, "minutes": n, "done": {status: [n ints]}, "total": [n ints],
        "queues": {queue: [n ints or None]}}``: done counts summed over the workers, queue sizes the largest
        sample of that minute (``None`` when no worker sampled it).
    """
    now = time.time() if now is None else now
    end = int(now // 60 * 60)
    start = end - 60 * (minutes - 1)
    done: dict[str, list[int]] = {}
    queues: dict[str, list[int | None]] = {}
    for history in histories:
        if not history or history.get("v") != 1:
            continue
        first = int(history.get("start") or 0)
        for status, values in (history.get("done") or {}).items():
            series = done.setdefault(status, [0] * minutes)
            for i, value in enumerate(values):
                slot = (first + 60 * i - start) // 60
                if 0 <= slot < minutes and value:
                    series[slot] += int(value)
        for queue, values in (history.get("queues") or {}).items():
            qseries = queues.setdefault(queue, [None] * minutes)
            for i, value in enumerate(values):
                slot = (first + 60 * i - start) // 60
                if 0 <= slot < minutes and value is not None:
                    current = qseries[slot]
                    qseries[slot] = int(value) if current is None else max(current, int(value))
    total = [sum(series[i] for series in done.values()) for i in range(minutes)]
    return {"start": start, "minutes": minutes, "done": done, "total": total, "queues": queues}
