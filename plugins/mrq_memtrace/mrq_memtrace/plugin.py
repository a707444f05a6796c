"""The MRQ hooks of mrq-memtrace (entry point ``memtrace``): ``mrq-worker --plugins memtrace``.

Also enabled, without ``--plugins``, by its activation flag ``--trace_memory`` (entry-point group
``mrq.plugin_flags``), the original MRQ's option.

Two modes (``--memtrace_mode``; ``auto`` picks ``objgraph`` with ``--greenlets 1``, else ``tracemalloc``):

* ``objgraph`` (``--trace_memory``): around each job (wrapper of ``mrq_job_execute``), object counts by
  type and resident memory; ``memory_diff`` and ``memory_growth`` on the job, a log report after each job,
  totals per task path in ``report["memtrace"]``; ``--trace_memory_type`` draws a back-reference chain.
* ``tracemalloc``: every report (``mrq_worker_report``), the allocation sites whose retained memory keeps
  growing, in ``report["memtrace"]`` and the log.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mrq.config import Option
from mrq.context import log as job_log
from mrq.exceptions import ConfigError
from mrq.hookspecs import hookimpl

from mrq_memtrace.dashboard import mrq_dashboard_pages, mrq_dashboard_panels  # noqa: F401 - its dashboard page
from mrq_memtrace.growth import backref_graph, clean_caches, growth, rss, type_counts
from mrq_memtrace.sites import SiteTracker

MODES = ("auto", "objgraph", "tracemalloc")

#: The state of each worker of this process, by worker id.
STATES: dict[Any, Memtrace] = {}


class Memtrace:
    """One worker's memory tracer."""

    def __init__(self, worker: Any) -> None:
        config = worker.config
        self.log = worker.log
        self.mode = str(config.get("memtrace_mode"))
        self.top = int(config.get("memtrace_top") or 10)
        self.trace_type = str(config.get("trace_memory_type") or "")
        self.output_dir = str(config.get("trace_memory_output_dir") or "memory_traces")
        self.tasks: dict[str, dict[str, Any]] = {}
        self.sites = SiteTracker(limit=self.top) if self.mode == "tracemalloc" else None

    # ------------------------------------------------------------------ objgraph: per job
    def execute(self, job: Any) -> Generator[None, Any, Any]:
        clean_caches()
        before, rss_before = type_counts(), rss()
        try:
            return (yield)
        finally:
            clean_caches()
            after, rss_after = type_counts(), rss()
            grown = growth(before, after, self.top)
            del before, after
            fields: dict[str, Any] = {"memory_diff": rss_after - rss_before, "memory_growth": grown}
            graph_note = ""
            if self.trace_type:
                try:
                    path, graph_note = backref_graph(self.trace_type, self.output_dir,
                                                     f"{self.trace_type}-{job.id}")
                except Exception as exc:  # noqa: BLE001 - a drawing failure must not fail the job
                    path, graph_note = None, f"graph of {self.trace_type!r} failed: {type(exc).__name__}: {exc}"
                if path:
                    fields["memory_graph"] = path
            job.store(**fields)
            self._account(job.path, fields["memory_diff"], grown)
            lines = [f"    {g['type']:<50} {g['count']:>9} {g['delta']:>+8}" for g in grown]
            job_log.info("memtrace: job %s %s: memory_diff %+d bytes (rss %.1f MB); %s%s%s", job.id, job.path,
                         fields["memory_diff"], rss_after / 2**20,
                         "object types that grew:\n" + "\n".join(lines) if lines else "no object type grew",
                         "\n" if lines and graph_note else ("; " if graph_note else ""), graph_note)

    def _account(self, path: str, diff: int, grown: list[dict[str, Any]]) -> None:
        task = self.tasks.setdefault(path, {"path": path, "jobs": 0, "memory_diff": 0, "types": {}})
        task["jobs"] += 1
        task["memory_diff"] += diff
        for g in grown:
            task["types"][g["type"]] = task["types"].get(g["type"], 0) + g["delta"]

    # ------------------------------------------------------------------ report
    def report(self, report: dict[str, Any]) -> None:
        data: dict[str, Any] = {"mode": self.mode}
        if self.mode == "objgraph":
            tasks = sorted(self.tasks.values(), key=lambda t: -t["memory_diff"])
            data["tasks"] = [
                {"path": t["path"], "jobs": t["jobs"], "memory_diff": t["memory_diff"],
                 "types": [{"type": name, "delta": delta} for name, delta in
                           sorted(t["types"].items(), key=lambda kv: -kv[1])[:self.top]]}
                for t in tasks]
        elif self.sites is not None:
            sites = self.sites.update()
            data.update(sites=sites, snapshots=self.sites.snapshots, traced_bytes=self.sites.traced,
                        snapshot_ms=round(self.sites.last_ms, 1))
            if sites:
                self.log.warning(
                    "memtrace: %d allocation site(s) keep growing (tracemalloc, %d snapshots, %.1f MB traced):\n%s",
                    len(sites), self.sites.snapshots, self.sites.traced / 2**20,
                    "\n".join(f"    {s['site']}: +{s['growth'] / 1024:.1f} KiB since the first snapshot "
                              f"({s['size'] / 1024:.1f} KiB in {s['count']} blocks, grew {s['intervals']} "
                              f"times)\n        {s['code']}" for s in sites))
            else:
                self.log.debug("memtrace: no allocation site keeps growing (%.1f MB traced)",
                               self.sites.traced / 2**20)
        report["memtrace"] = data


@hookimpl
def mrq_add_options() -> list[Option]:
    worker = ("worker",)
    return [
        Option("trace_memory", bool, False,
               "memtrace: per-job memory growth (objgraph types, memory_diff); needs --greenlets 1.",
               commands=worker),
        Option("trace_memory_type", str, "",
               "memtrace: after each job, draw the reference chain of a random object of this type.",
               commands=worker),
        Option("trace_memory_output_dir", str, "memory_traces",
               "memtrace: folder of the --trace_memory_type graphs.", commands=worker),
        Option("memtrace_mode", str, "auto",
               "memtrace: objgraph (per job, --greenlets 1), tracemalloc (growing allocation sites, any "
               "--greenlets), auto (objgraph with one greenlet, else tracemalloc).",
               commands=worker, choices=MODES),
        Option("memtrace_top", int, 10, "memtrace: types or allocation sites listed per report.",
               commands=worker),
    ]


@hookimpl
def mrq_configure(config: Any) -> None:
    mode = config.get("memtrace_mode") or "auto"
    greenlets = int(config.get("greenlets") or 1)
    if config.get("trace_memory"):
        if mode == "tracemalloc":
            raise ConfigError("--trace_memory is the per-job (objgraph) mode and --memtrace_mode tracemalloc the "
                              "other one: choose one.")
        mode = "objgraph"
    if mode == "auto":
        mode = "objgraph" if greenlets == 1 else "tracemalloc"
    if mode == "objgraph" and greenlets > 1:
        raise ConfigError(
            f"--trace_memory measures memory per job, which needs one job at a time: with --greenlets {greenlets} "
            "jobs overlap and what each allocates cannot be told apart. Run a worker with --greenlets 1 on the "
            "same queue, or use --memtrace_mode tracemalloc, which works with any number of greenlets (it "
            "reports the allocation sites that keep growing, not jobs).")
    if config.get("trace_memory_type") and mode != "objgraph":
        raise ConfigError("--trace_memory_type draws a graph after each job: it needs the per-job mode "
                          "(--trace_memory with --greenlets 1).")
    if int(config.get("memtrace_top") or 0) < 1:
        raise ConfigError("--memtrace_top must be at least 1.")
    config["memtrace_mode"] = mode


@hookimpl
def mrq_worker_start(worker: Any) -> None:
    state = STATES[worker.id] = Memtrace(worker)
    if state.sites is not None:
        state.sites.start()
    worker.log.info("memtrace: mode %s%s", state.mode,
                    f", graphs of {state.trace_type!r} in {state.output_dir}/" if state.trace_type else "")


@hookimpl(wrapper=True)
def mrq_job_execute(worker: Any, job: Any) -> Generator[None, Any, Any]:
    state = STATES.get(worker.id) if worker is not None else None
    if state is None or state.mode != "objgraph":
        return (yield)
    return (yield from state.execute(job))


@hookimpl
def mrq_worker_report(worker: Any, report: dict[str, Any]) -> None:
    state = STATES.get(worker.id)
    if state is not None:
        state.report(report)
