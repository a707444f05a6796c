"""Per-job cost of mrq-metrics' hooks, in microseconds: ``python plugins/mrq_metrics/bench/micro.py``.

Measures the three implementations (``mrq_jobs_dequeued`` and ``mrq_jobs_status_changed`` per job in batches of
50, ``mrq_job_finished`` per job) called directly, and the same calls through pluggy's dispatch (what a worker pays:
the hook call with the plugin registered minus the call without it), on a regular job and on a raw job.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import pluggy
from bson import ObjectId
from mrq import hookspecs

from mrq_metrics import plugin
from mrq_metrics.figures import Figures

N = 5_000
REPEAT = 15  # the best of: the machine is shared


def jobs(n: int, raw: bool) -> list[Any]:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    data = {"queue": "default", "path": "tasks.Noop", "status": "queued", "retry_count": 0, "datequeued": now,
            "dateupdated": now}
    if raw:
        data = {"queue": "crawl_retries", "raw_queue": "crawl_raw", "path": "tasks.Noop", "datequeued": now}
    return [SimpleNamespace(id=ObjectId(), data=dict(data), datestarted=time.time()) for _ in range(n)]


def per_job(func: Any, items: list[Any], reset: Any = None) -> float:
    best = float("inf")
    for _ in range(REPEAT):
        if reset is not None:
            reset()
        start = time.perf_counter()
        func(items)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def run(raw: bool) -> dict[str, float]:
    figures = Figures(tempfile.mkdtemp())
    batch = 50
    out = {}
    items = jobs(N, raw)
    out["dequeued"] = per_job(lambda js: [figures.dequeued(js[i:i + batch]) for i in range(0, len(js), batch)],
                              items, figures.entries.clear)

    def dequeue_all() -> None:
        figures.dequeued(items)

    out["finished"] = per_job(lambda js: [figures.finished(j, "success") for j in js], items, dequeue_all)

    def finish_all() -> None:
        dequeue_all()
        for j in items:
            figures.finished(j, "success")

    out["status_changed"] = per_job(
        lambda js: [figures.statuses_changed([(j.id, "success", None) for j in js[i:i + batch]])
                    for i in range(0, len(js), batch)], items, finish_all)
    # Through pluggy: the hook with and without the plugin (and one no-op plugin, as a worker has the kernel's).
    pm = pluggy.PluginManager("mrq")
    pm.add_hookspecs(hookspecs)

    class Other:
        @hookspecs.hookimpl
        def mrq_job_finished(self, job: Any, status: str) -> None:
            pass

        @hookspecs.hookimpl
        def mrq_jobs_status_changed(self, changes: list[Any]) -> None:
            pass

        @hookspecs.hookimpl
        def mrq_jobs_dequeued(self, jobs: list[Any]) -> None:
            pass

    pm.register(Other())
    worker = SimpleNamespace(id=1)

    def through(items: list[Any]) -> None:
        h = pm.hook
        for i in range(0, len(items), batch):
            h.mrq_jobs_dequeued(worker=worker, jobs=items[i:i + batch])
        for i in range(0, len(items), batch):
            for j in items[i:i + batch]:
                h.mrq_job_finished(worker=worker, job=j, status="success")
                if not raw:  # a raw success stores nothing: no status call (the kernel calls both kinds)
                    h.mrq_job_status_changed(job_id=j.id, status="success", fields={})
            if not raw:
                h.mrq_jobs_status_changed(changes=[(j.id, "success", {}) for j in items[i:i + batch]])

    plugin._FIGURES = None
    without = per_job(through, items)
    pm.register(plugin)
    plugin._FIGURES = Figures(tempfile.mkdtemp())
    with_plugin = per_job(through, items)
    plugin._FIGURES = None
    out["dispatch_without"], out["dispatch_with"] = without, with_plugin
    out["added_per_job"] = with_plugin - without
    return out


if __name__ == "__main__":
    for raw in (False, True):
        figures = run(raw)
        print(("raw job    " if raw else "regular job"), "  ".join(f"{k} {v:.2f} µs" for k, v in figures.items()))
