"""Per-job cost of mrq-otel's hooks, in microseconds: ``python plugins/mrq_otel/bench/micro.py``.

Through pluggy, as a worker pays it: per job, ``mrq_job_execute`` (the kernel's implementation replaced by a no-op
task) then ``mrq_job_finished``, and one ``mrq_job_log_fields`` (one log line); per job at enqueue, a share of one
``mrq_jobs_enqueuing`` call for a batch of 1000 documents (and its function called after the insert). Each figure is
the time with the plugin registered minus the time without it, the best of several rounds (the machine is shared),
in three set-ups measured one after the other in this process: the API only (no SDK: every span a no-op), the SDK
with no span processor (spans made and dropped), the SDK with a ``SimpleSpanProcessor`` into an in-memory exporter.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pluggy
from bson import ObjectId
from mrq import hookspecs
from mrq.job import Job
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mrq_otel import plugin

N = 2_000
REPEAT = 9
CARRIER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


class Kernel:
    """The kernel's own implementations, reduced to their dispatch."""

    @hookspecs.hookimpl(trylast=True)
    def mrq_job_execute(self, job: Any) -> Any:
        return 1

    @hookspecs.hookimpl
    def mrq_job_finished(self, job: Any, status: str) -> None:
        pass

    @hookspecs.hookimpl
    def mrq_jobs_enqueuing(self, docs: list[dict[str, Any]]) -> None:
        pass


def manager(with_plugin: bool) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("mrq")
    pm.add_hookspecs(hookspecs)
    pm.register(Kernel(), "kernel")
    if with_plugin:
        pm.register(plugin, "otel")
    return pm


def jobs(n: int) -> list[Job]:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return [Job(ObjectId(), {"path": "tasks.Noop", "params": {}, "queue": "default", "retry_count": 0,
                             "datequeued": now, "otel": CARRIER}) for _ in range(n)]


def best(func: Callable[[], None], per: int) -> float:
    out = float("inf")
    for _ in range(REPEAT):
        start = time.perf_counter()
        func()
        out = min(out, time.perf_counter() - start)
    return out / per * 1e6


def worker_side(pm: pluggy.PluginManager) -> float:
    h, worker = pm.hook, SimpleNamespace(id=1, config={})
    items = jobs(N)

    def run() -> None:
        for job in items:
            job.stored = {}
            h.mrq_job_execute(worker=worker, job=job)
            h.mrq_job_log_fields(job=job)
            h.mrq_job_finished(worker=worker, job=job, status="success")

    return best(run, N)


def enqueue_side(pm: pluggy.PluginManager) -> float:
    h = pm.hook
    batch = 1000

    def run() -> None:
        for _ in range(N // batch):
            docs = [{"_id": ObjectId(), "path": "tasks.Noop", "params": {}} for _ in range(batch)]
            for after in h.mrq_jobs_enqueuing(path="tasks.Noop", queue="default", docs=docs, options={}):
                if after:
                    after([d["_id"] for d in docs])

    return best(run, N) - best(lambda: [[{"_id": ObjectId(), "path": "tasks.Noop", "params": {}}
                                          for _ in range(batch)] for _ in range(N // batch)], N)


def measure() -> dict[str, float]:
    without, with_plugin = manager(False), manager(True)
    out = {}
    for side, func in (("worker", worker_side), ("enqueue", enqueue_side)):
        off, on = func(without), func(with_plugin)
        out[f"{side}_without_us"], out[f"{side}_with_us"], out[f"{side}_added_us"] = off, on, on - off
    return out


def main() -> dict[str, dict[str, float]]:
    results = {"api_only": measure()}
    provider = TracerProvider()
    trace.set_tracer_provider(provider)   # the plugin's proxy tracer now makes real spans
    results["sdk_no_exporter"] = measure()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))

    def measure_cleared() -> dict[str, float]:
        memory.clear()
        return measure()

    results["sdk_in_memory"] = measure_cleared()
    assert propagate.get_global_textmap() is not None
    return results


if __name__ == "__main__":
    figures = main()
    for name, row in figures.items():
        print(f"{name:16}", "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(figures, f, indent=1)
