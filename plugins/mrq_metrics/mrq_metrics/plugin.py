"""The MRQ hooks of mrq-metrics (entry point ``metrics``): ``mrq-worker --plugins metrics --metrics_port 9567``.

In a worker with ``--metrics_port`` (0 = off: the hooks then do nothing):

* ``mrq_jobs_dequeued``, ``mrq_job_finished``, ``mrq_jobs_status_changed`` (per batch): counts and timings in dicts
  (:class:`mrq_metrics.figures.Figures`);
* ``mrq_worker_job_fields``: ``dateupdated``, ``datedue``, ``dateretry`` with each job (its wait's start);
* ``mrq_worker_services``: every ``--metrics_interval``, the figures go to the host's shared files, this process
  tries to serve the port if none does, and (every 30 s) entries left behind are settled;
* ``mrq_worker_report``: the status writer's and the round-trip counters; the final report flushes everything.

In ``mrq-dashboard``, the dashboard's hook ``mrq_dashboard_routes`` adds ``/metrics`` with the cluster gauges.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
from mrq import status as st
from mrq.config import Option
from mrq.hookspecs import hookimpl
from mrq.job import JOBS
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mrq_metrics.cluster import ClusterCollector, all_queues, worker_queues_picker
from mrq_metrics.figures import Figures
from mrq_metrics.server import Endpoint, HostCollector, SharedDir, default_dir, metrics_app

log = logging.getLogger("mrq.metrics")

#: Fields each job is fetched with, to know since when it could run.
JOB_FIELDS = ["dateupdated", "datedue", "dateretry"]

#: Seconds between two sweeps of the entries left behind (see :meth:`Figures.sweep`).
SWEEP_INTERVAL = 30.0


class ProcessMetrics:
    """This process's figures, shared directory and endpoint (one per process, whatever its number of workers)."""

    def __init__(self, config: Any) -> None:
        self.port = int(config.get("metrics_port") or 0)
        self.interval = float(config.get("metrics_interval") or 1.0)
        self.shared = SharedDir(str(config.get("metrics_dir") or "") or default_dir(self.port))
        self.figures = Figures(self.shared.path, st.FINAL_STATUSES)  # with the final statuses of plugins
        self.workers: dict[Any, Any] = {}
        self.cluster = bool(config.get("metrics_cluster", True))
        self.ip = str(config.get("metrics_ip") or "127.0.0.1")
        self.endpoint: Endpoint | None = None
        self._last_sweep = time.monotonic()

    def start(self, worker: Any) -> None:
        if not self.workers:
            if self.shared.join():
                log.info("metrics: %s emptied (no other worker process of this host uses it)", self.shared.path)
            collectors: list[Any] = [HostCollector(self.shared, before=self.flush)]
            if self.cluster:
                collectors.append(ClusterCollector(worker_queues_picker(list(worker.queues))))
            self.endpoint = Endpoint(self.ip, self.port, metrics_app(collectors))
        self.workers[worker.id] = worker
        self.flush()
        self.endpoint.try_serve()  # type: ignore[union-attr]

    def flush(self) -> None:
        in_progress: Counter[tuple[str, str]] = Counter()
        for worker in list(self.workers.values()):
            for job in list(worker.jobs.values()):
                in_progress[(job.queue, job.path)] += 1
        self.figures.greenlets = sum(int(w.greenlets) for w in self.workers.values())
        self.figures.flush(in_progress)

    def loop(self) -> None:
        """A worker service: flush, serve if nobody does, settle leftovers."""
        while True:
            gevent.sleep(self.interval)
            self.flush()
            if self.endpoint is not None:
                self.endpoint.try_serve()
            if time.monotonic() - self._last_sweep > SWEEP_INTERVAL:
                self._last_sweep = time.monotonic()
                self.sweep()

    def sweep(self) -> None:
        from mrq.context import connections

        running = {i for w in list(self.workers.values()) for i in list(w.jobs)}
        try:
            self.figures.sweep(running, connections.mongodb_jobs[JOBS])
        except Exception as exc:  # noqa: BLE001 - MongoDB down: next time
            log.warning("metrics: settling job ends failed: %s: %s", type(exc).__name__, exc)

    def stop(self, worker: Any) -> None:
        self.flush()
        self.workers.pop(worker.id, None)
        if self.workers:
            return
        if self.endpoint is not None:
            self.endpoint.stop()
        self.shared.leave()


#: This process's metrics, once a worker with --metrics_port started in it.
PROCESS: ProcessMetrics | None = None
_FIGURES: Figures | None = None  # PROCESS.figures, for the per-job hooks


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port (0 = off, else 1-65535)")


def _check_interval(seconds: float) -> None:
    if not (math.isfinite(seconds) and 0 < seconds <= 3600):
        raise ValueError(f"{seconds} is not a number of seconds between 0 (excluded) and 3600")


@hookimpl
def mrq_add_options() -> list[Option]:
    w = ("worker",)
    return [
        Option("metrics_port", int, 0, "metrics: serve Prometheus metrics at http://<metrics_ip>:<port>/metrics "
               "(0 = off); the processes of a host (--processes) share one port, one endpoint.", commands=w,
               check=_check_port),
        Option("metrics_ip", str, "127.0.0.1", "metrics: address of the /metrics endpoint (0.0.0.0 = every "
               "interface).", commands=w),
        Option("metrics_dir", str, "", "metrics: directory the worker processes of this host share their figures "
               "in ('' = <tmp>/mrq-metrics-<uid>-<port>).", commands=w),
        Option("metrics_interval", float, 1.0, "metrics: seconds between two writes of a process's figures to the "
               "shared directory (how stale a scrape may be).", commands=w, check=_check_interval),
        Option("metrics_cluster", bool, True, "metrics: the endpoint also reports the gauges of this worker's "
               "queues (depth, oldest job age) and the live workers, read from Redis and MongoDB at each scrape.",
               commands=w),
    ]


@hookimpl
def mrq_worker_job_fields(worker: Any) -> list[str]:
    return JOB_FIELDS if int(worker.config.get("metrics_port") or 0) else []


@hookimpl
def mrq_worker_start(worker: Any) -> None:
    global PROCESS, _FIGURES
    if not int(worker.config.get("metrics_port") or 0):
        return
    if PROCESS is None:
        PROCESS = ProcessMetrics(worker.config)
        _FIGURES = PROCESS.figures
    PROCESS.start(worker)


@hookimpl
def mrq_worker_services(worker: Any) -> list[Callable[[], Any]]:
    if PROCESS is None or worker.id not in PROCESS.workers:
        return []
    return [PROCESS.loop] if len(PROCESS.workers) == 1 else []


@hookimpl
def mrq_jobs_dequeued(jobs: list[Any]) -> None:
    if _FIGURES is not None:
        _FIGURES.dequeued(jobs)


@hookimpl
def mrq_job_finished(worker: Any, job: Any, status: str) -> None:
    if _FIGURES is not None and worker is not None:
        _FIGURES.finished(job, status)


@hookimpl
def mrq_jobs_status_changed(changes: list[Any]) -> None:
    if _FIGURES is not None:
        _FIGURES.statuses_changed(changes)


@hookimpl
def mrq_worker_report(worker: Any, report: dict[str, Any]) -> None:
    global PROCESS, _FIGURES
    if PROCESS is None or worker.id not in PROCESS.workers:
        return
    PROCESS.figures.set_report(worker.id, report.get("counters") or {})
    report["metrics"] = {"port": PROCESS.port, "serving": bool(PROCESS.endpoint and PROCESS.endpoint.serving),
                         "dir": PROCESS.shared.path}
    if report.get("status") == "stop":  # the final report: everything is counted
        PROCESS.stop(worker)
        if not PROCESS.workers:
            PROCESS, _FIGURES = None, None


@hookimpl(optionalhook=True)
def mrq_dashboard_routes() -> list[dict[str, Any]]:
    """The dashboard's ``/metrics``: the cluster gauges of every queue (behind the dashboard's auth)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(all_queues))

    def view(args: dict[str, str]) -> tuple[bytes, int, dict[str, str]]:
        return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    return [{"rule": "/metrics", "name": "metrics", "view": view}]
