"""Process sampling and stamp files, shared by ``bench_mrq.py`` and ``peers_adapter.py`` (stdlib only: the adapter
runs under the peers' venv).

* :class:`ProcSampler` samples a process and its descendants from ``/proc``: RSS summed over the tree (the peers
  harness's "peak RSS (tree)") and CPU time (user + system) summed over the tree, with the time of each sample, so
  that the CPU spent between two instants (the first job start and the last job end) can be interpolated.
* :func:`read_stamps` / :func:`stamp_window`: the stamp lines ``"<arg> <start> <end>"`` that every benchmark job
  appends (``mrq_bench_tasks.stamp``, the peers' ``apps/bench_common.stamp``), and the processing window they give.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

_CLK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree_pids(root: int) -> list[int]:
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(_children(pid))
    return pids


def proc_rss_cpu(pid: int) -> tuple[int, float] | None:
    """(RSS bytes, user + system CPU seconds) of one live process, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
    if fields[0] == b"Z":
        return None
    return int(fields[21]) * _PAGE, (int(fields[11]) + int(fields[12])) / _CLK


class ProcSampler:
    """Samples of (time, RSS of the tree, CPU of the tree) for a process we started."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, float]] = []
        self.peak_rss = 0
        self.max_procs = 0

    def sample(self) -> tuple[float, int, float]:
        rss, cpu = 0, 0.0
        pids = tree_pids(self.pid)
        for pid in pids:
            got = proc_rss_cpu(pid)
            if got is not None:
                rss += got[0]
                cpu += got[1]
        now = time.time()
        # CPU of exited descendants disappears from the sum: keep it monotonic
        if self.samples and cpu < self.samples[-1][2]:
            cpu = self.samples[-1][2]
        self.samples.append((now, rss, cpu))
        self.peak_rss = max(self.peak_rss, rss)
        self.max_procs = max(self.max_procs, len(pids))
        return now, rss, cpu

    def cpu_at(self, t: float) -> float | None:
        """CPU seconds of the tree at time ``t``, interpolated between the samples around it."""
        times = [s[0] for s in self.samples]
        i = bisect_left(times, t)
        if i == 0 or i >= len(times):
            return None
        (t0, _, c0), (t1, _, c1) = self.samples[i - 1], self.samples[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1

    def cpu_between(self, t0: float, t1: float) -> float | None:
        a, b = self.cpu_at(t0), self.cpu_at(t1)
        return b - a if a is not None and b is not None else None

    def wait_idle(self, min_s: float = 2.0, stable_s: float = 1.0, max_s: float = 10.0, every: float = 0.1,
                  alive: Callable[[], bool] | None = None) -> float:
        """Sample until the RSS has not changed by more than 1% for ``stable_s`` (at least ``min_s`` after the
        first sample, at most ``max_s``); return that RSS in bytes. ``alive()`` False stops early."""
        start = time.time()
        while True:
            now, rss, _ = self.sample()
            recent = [s[1] for s in self.samples if s[0] >= now - stable_s]
            settled = (now - start >= min_s and recent and max(recent) - min(recent) <= 0.01 * max(recent)
                       and self.samples[0][0] <= now - stable_s)
            if settled or now - start >= max_s or (alive is not None and not alive()):
                return rss
            time.sleep(every)


def parse_stamps(data: bytes) -> list[tuple[int, float, float]]:
    """Stamp lines ``b"<arg> <start> <end>"`` -> (argument, job start, job end), ``time.time()`` in the worker."""
    rows = []
    for line in data.split(b"\n"):
        parts = line.split()
        if len(parts) == 3:
            rows.append((int(parts[0]), float(parts[1]), float(parts[2])))
    return rows


def read_stamps(path: str) -> list[tuple[int, float, float]]:
    try:
        with open(path, "rb") as f:
            return parse_stamps(f.read())
    except FileNotFoundError:
        return []


def count_stamps(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def stamp_window(rows: list[tuple[int, float, float]], expected: range | None = None) -> dict[str, Any]:
    """Processing window of a run, as the peers harness computes it: N / (last job end - first job start).

    ``expected``: the arguments that must each have run exactly once (``jobs_lost`` counts the missing ones,
    ``jobs_duplicated`` the extra runs).
    """
    out: dict[str, Any] = {"jobs_run": len(rows), "jobs_distinct": len({r[0] for r in rows})}
    if expected is not None:
        args = [r[0] for r in rows]
        want = set(expected)
        out["jobs_lost"] = len(want - set(args))
        out["jobs_duplicated"] = len(args) - len(set(args)) + len(set(args) - want)
    if rows:
        first_start, last_end = min(r[1] for r in rows), max(r[2] for r in rows)
        out["first_start"], out["last_end"] = first_start, last_end
        out["process_s"] = last_end - first_start
        out["process_per_s"] = len(rows) / out["process_s"] if out["process_s"] > 0 else None
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, interpolated between the two nearest ranks; ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
