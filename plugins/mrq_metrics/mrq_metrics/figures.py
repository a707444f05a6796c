"""A worker process's figures: counted in plain dicts on the jobs' path, written to the shared files in batches.

The hooks only add to dicts (about a microsecond per job, see the README's cost section); :meth:`Figures.flush`,
called every ``--metrics_interval`` seconds and at stop, writes what changed to this process's
``prometheus_client`` multiprocess files, where the serving process of the host reads them at each scrape.

Which status counts, and when (``mrq_jobs_ended_total`` must equal the statuses stored in MongoDB):

* a regular job's end counts once its status is **stored** (``mrq_jobs_status_changed`` in the worker): a status
  the worker computed but MongoDB refused (the job was cancelled meanwhile) is not counted as computed;
* a job cancelled while it ran counts ``cancel`` when it stops (the canceller stored ``cancel`` already, and the
  worker's own write is refused);
* a raw job counts when it ends (its status may be one its queue never stores);
* an end whose stored status never came back (a refused write) is looked up in MongoDB after a minute, in one
  query for all of them, and counted as stored.
"""

from __future__ import annotations

import bisect
import datetime
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.values import MultiProcessValue

__all__ = ["BUCKETS", "FINAL_STATUSES", "Figures", "runnable_since"]

#: Histogram buckets (seconds) of wait and run times: from 1 ms to 1 h, about 2.5x apart.
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                              30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
_INF = len(BUCKETS)  # index of the +Inf bucket; the sum follows it
_LE = tuple(repr(b) for b in BUCKETS) + ("+Inf",)

#: MRQ's own final statuses, one series each in ``mrq_jobs_ended_total`` (a worker also counts those plugins declare:
#: ``mrq.status.FINAL_STATUSES`` once they are loaded).
FINAL_STATUSES = frozenset({"success", "failed", "maxretries", "cancel", "abort", "timeout", "maxconcurrency",
                            "maxworkerdeaths"})
_EPOCH = datetime.datetime(1970, 1, 1)
_NO_DATA: dict[str, Any] = {}
_bisect = bisect.bisect_left

#: Seconds after its end a job's stored status is looked up, if it never came back from the status writer.
LOOKUP_AFTER = 60.0

HELP = {
    "mrq_jobs_ended": "Jobs that reached a final status, by queue, task path and status.",
    "mrq_job_retries": "Job executions that ended in a retry (the job runs again later).",
    "mrq_job_run_seconds": "Time from a job's start to its end, per execution.",
    "mrq_job_wait_seconds": "Time from when a job could run (queued, due for delayed jobs and retries, requeued) "
                            "to its start, per execution.",
    "mrq_jobs_in_progress": "Jobs running now.",
    "mrq_worker_greenlets": "Greenlets (job slots) of the worker processes.",
    "mrq_redis_roundtrips": "Redis round trips made by the worker processes (a pipeline counts once).",
    "mrq_mongodb_roundtrips": "MongoDB round trips made by the worker processes.",
    "mrq_status_writes": "Job statuses stored by the workers' batched status writers.",
    "mrq_status_write_batches": "Batched status writes (bulk writes to MongoDB) of the workers.",
    "mrq_status_write_errors": "Failed status writes of the workers (retried until stored).",
}

#: Worker report counters exported as counters: report key -> metric name.
REPORT_COUNTERS = {"redis_roundtrips": "mrq_redis_roundtrips", "mongodb_roundtrips": "mrq_mongodb_roundtrips",
                   "statuses_written": "mrq_status_writes", "status_batches": "mrq_status_write_batches",
                   "status_write_errors": "mrq_status_write_errors"}


def runnable_since(data: dict[str, Any]) -> float | None:
    """Unix time from which a job could run: the latest of when it was queued or last updated (``datequeued``,
    ``dateupdated``: a requeue or an interrupt sets them), its due time when delayed (``datedue``) and the due time
    of its retry (``dateretry``). ``None`` for a raw job (no document when it starts, so no enqueue time)."""
    if "raw_queue" in data:
        return None
    latest = data.get("dateupdated") or data.get("datequeued")  # dateupdated >= datequeued
    due = data.get("datedue") or data.get("dateretry")
    if due is not None and (latest is None or due > latest):
        latest = due
    if latest is None:
        return None
    if latest.tzinfo is not None:  # a client with tz_aware=True
        latest = latest.replace(tzinfo=None) - latest.utcoffset()
    return (latest - _EPOCH).total_seconds()


class Figures:
    """The figures of one worker process (all its workers), and their files."""

    def __init__(self, directory: str, final: Iterable[str] = FINAL_STATUSES) -> None:
        self.directory = directory
        #: final statuses (MRQ's, and those plugins declare with ``mrq_job_statuses``), then every end of a run
        self.final = frozenset(final)
        self.ends = self.final | {"retry", "interrupt"}
        #: job id -> [(queue, path), status computed by the worker or None, monotonic time of the last event]
        self.entries: dict[Any, list[Any]] = {}
        self.ended: dict[tuple[str, str], dict[str, int]] = {}  # (queue, path) -> status -> count
        self.retries: dict[tuple[str, str], int] = {}
        self.run: dict[tuple[str, str], list[float]] = {}
        self.wait: dict[tuple[str, str], list[float]] = {}
        self.report: dict[str, int] = {}    # counters of the latest worker reports, summed over this process's workers
        self.reports: dict[Any, dict[str, int]] = {}
        self.greenlets = 0
        self._written: dict[tuple[str, tuple[str, ...]], float] = {}
        self._values: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._base: dict[tuple[str, tuple[str, ...]], float] = {}
        self._value_class: Any = None
        self._in_progress: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ the jobs' path (keep these fast)
    def dequeued(self, jobs: Iterable[Any]) -> None:
        entries, now = self.entries, time.monotonic()
        for job in jobs:
            data = job.data or _NO_DATA
            if "raw_queue" not in data:  # a raw job is counted when it ends: it needs no entry
                entries[job.id] = [(data.get("queue", "default"), data.get("path", "")), None, now]

    def finished(self, job: Any, status: str) -> None:
        data = job.data or _NO_DATA
        raw = data.get("raw_queue")
        if raw is not None:  # labelled with the raw queue it came from (its "queue" is where a retry would go)
            key = (raw, data.get("path", ""))
            entry = None
        else:
            entry = self.entries.get(job.id)
            if entry is None:  # dequeued long ago (a suspect that waited its turn): its labels from the job itself
                entry = self.entries[job.id] = [(data.get("queue", "default"), data.get("path", "")), None, 0.0]
            key = entry[0]
        start = job.datestarted
        if start:
            took = time.time() - start
            h = self.run.get(key) or self._histogram(self.run, key)
            h[_bisect(BUCKETS, took)] += 1
            h[-1] += took
            since = runnable_since(data) if entry is not None else None
            if since is not None:
                waited = start - since if start > since else 0.0
                h = self.wait.get(key) or self._histogram(self.wait, key)
                h[_bisect(BUCKETS, waited)] += 1
                h[-1] += waited
        if entry is None:
            self._count(key, status)
        elif status == "cancel":
            del self.entries[job.id]
            self._count(key, status)
        else:
            entry[1], entry[2] = status, time.monotonic()

    @staticmethod
    def _histogram(table: dict[tuple[str, str], list[float]], key: tuple[str, str]) -> list[float]:
        h = table[key] = [0] * (_INF + 1) + [0.0]
        return h

    def statuses_changed(self, changes: Iterable[tuple[Any, str, Any]]) -> None:
        """A batch of stored statuses (``mrq_jobs_status_changed``): the ends of the jobs this process ran count."""
        ends, entries = self.ends, self.entries
        for job_id, status, _ in changes:
            if status in ends:
                entry = entries.pop(job_id, None)
                if entry is not None:
                    self._count(entry[0], status)

    def status_changed(self, job_id: Any, status: str) -> None:
        self.statuses_changed(((job_id, status, None),))

    def _count(self, key: tuple[str, str], status: str) -> None:
        if status in self.final:
            by_status = self.ended.get(key)
            if by_status is None:
                by_status = self.ended[key] = {}
            by_status[status] = by_status.get(status, 0) + 1
        elif status == "retry":
            self.retries[key] = self.retries.get(key, 0) + 1

    # ------------------------------------------------------------------ every --metrics_interval
    def sweep(self, running: set[Any], collection: Any, now: float | None = None) -> int:
        """Settle the entries left behind: ends whose stored status never came back (a write refused because the
        job was cancelled or requeued meanwhile) are counted with the status stored in MongoDB (one query); jobs
        dequeued but never run here (deferred for a max_concurrency slot) are forgotten. Returns how many were
        settled."""
        now = time.monotonic() if now is None else now
        late = [i for i, e in self.entries.items() if now - e[2] > LOOKUP_AFTER and i not in running]
        if not late:
            return 0
        ended = [i for i in late if self.entries[i][1] is not None]
        for i in late:
            if self.entries[i][1] is None:
                del self.entries[i]
        if ended:
            stored = {d["_id"]: d.get("status") for d in collection.find({"_id": {"$in": ended}}, {"status": 1})}
            for i in ended:
                status = stored.get(i)
                if status in self.ends or status is None or now - self.entries[i][2] > 3600:
                    entry = self.entries.pop(i)
                    if status is not None:
                        self._count(entry[0], status)
                # else: its write is still on its way (MongoDB down?): status_changed will count it
        return len(late)

    def set_report(self, worker_id: Any, counters: dict[str, Any]) -> None:
        """The counters of a worker report (round trips are the process's: the same in each of its workers)."""
        self.reports[worker_id] = {k: int(counters.get(k) or 0) for k in REPORT_COUNTERS}
        self.report = {k: (max if k.endswith("roundtrips") else sum)(r[k] for r in self.reports.values())
                       for k in REPORT_COUNTERS}

    def _value(self, typ: str, metric: str, name: str, labelnames: Sequence[str], labels: tuple[str, ...],
               mode: str = "") -> Any:
        key = (name, labels)
        value = self._values.get(key)
        if value is None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.directory  # where MultiProcessValue puts its files
            if self._value_class is None:
                self._value_class = MultiProcessValue()
            value = self._values[key] = self._value_class(typ, metric, name, list(labelnames), list(labels),
                                                          HELP[metric], multiprocess_mode=mode)
            if typ != "gauge":  # counts left in this pid's file by a dead process (pid reuse) stay in the sum
                self._base[key] = value.get()
        return value

    def _set(self, typ: str, metric: str, name: str, labelnames: Sequence[str], labels: tuple[str, ...],
             total: float, mode: str = "") -> None:
        if self._written.get((name, labels)) == total:
            return
        self._value(typ, metric, name, labelnames, labels, mode).set(self._base.get((name, labels), 0) + total)
        self._written[(name, labels)] = total

    def flush(self, in_progress: Counter[tuple[str, str]]) -> None:
        """Write the totals that changed since the last flush to this process's files."""
        for (queue, path), by_status in list(self.ended.items()):
            for status, total in list(by_status.items()):
                self._set("counter", "mrq_jobs_ended", "mrq_jobs_ended_total", ("queue", "path", "status"),
                          (queue, path, status), total)
        for (queue, path), total in list(self.retries.items()):
            self._set("counter", "mrq_job_retries", "mrq_job_retries_total", ("queue", "path"), (queue, path), total)
        for metric, table in (("mrq_job_run_seconds", self.run), ("mrq_job_wait_seconds", self.wait)):
            for (queue, path), h in list(table.items()):
                for i, le in enumerate(_LE):  # every bucket, zeros too: histogram_quantile needs them all
                    self._set("histogram", metric, metric + "_bucket", ("queue", "path", "le"), (queue, path, le), h[i])
                self._set("histogram", metric, metric + "_sum", ("queue", "path"), (queue, path), h[-1])
        for key in self._in_progress - set(in_progress):
            in_progress[key] = 0  # gone: written as 0 (the series stays, at 0)
        for (queue, path), count in in_progress.items():
            self._set("gauge", "mrq_jobs_in_progress", "mrq_jobs_in_progress", ("queue", "path"), (queue, path),
                      count, mode="livesum")
        self._in_progress = {k for k, v in in_progress.items() if v}
        self._set("gauge", "mrq_worker_greenlets", "mrq_worker_greenlets", (), (), self.greenlets, mode="livesum")
        for key, metric in REPORT_COUNTERS.items():
            if key in self.report:
                self._set("counter", metric, metric + "_total", (), (), self.report[key])
