"""The MRQ hooks of mrq-greentrace (entry point ``greentrace``): ``mrq-worker --plugins greentrace``.

Also enabled, without ``--plugins``, by its activation flags ``--trace_greenlets``, ``--profile_tasks`` and
``--profile`` (entry-point group ``mrq.plugin_flags``).

* ``mrq_add_options``: ``--trace_greenlets``, ``--trace_greenlets_block_ms``, ``--profile_tasks``,
  ``--profile_tasks_dir``, ``--profile_tasks_top``, ``--profile``.
* ``mrq_configure``: checks them; ``--profile`` starts the whole-process profiler.
* ``mrq_worker_start`` / ``mrq_worker_stop``: install / remove the greenlet tracer.
* ``mrq_job_execute`` (wrapper): charges the job's greenlets; stores ``time``, ``switches``, ``blocked`` and
  ``profile`` on the job document.
* ``mrq_worker_report``: ``time``/``switches`` of the running jobs, ``report["greentrace"]`` (per task path).
"""

from __future__ import annotations

import cProfile
from collections.abc import Generator
from typing import Any

import gevent
from mrq.config import Option
from mrq.exceptions import ConfigError
from mrq.hookspecs import hookimpl

from mrq_greentrace.profiling import start_process_profile, top_functions, write_stats
from mrq_greentrace.tracer import Block, GreenletTracer, JobStats

#: The state of each worker of this process, by worker id.
STATES: dict[Any, Greentrace] = {}


class Greentrace:
    """One worker's tracer, its per-task totals and its profiling settings."""

    def __init__(self, worker: Any) -> None:
        config = worker.config
        self.log = worker.log
        self.block_ms = float(config.get("trace_greenlets_block_ms") or 0)
        self.tracer = GreenletTracer(self.block_ms / 1000, on_block=self._on_block)
        self.profile_tasks = set(config.get("profile_tasks") or [])
        self.profile_dir = str(config.get("profile_tasks_dir") or "profiles")
        self.profile_top = int(config.get("profile_tasks_top") or 20)
        self.tasks: dict[str, dict[str, Any]] = {}
        self.running: dict[Any, Any] = {}
        self.blocks = 0
        self.worst_block: dict[str, Any] | None = None

    def _task(self, path: str) -> dict[str, Any]:
        if path not in self.tasks:
            self.tasks[path] = {"path": path, "jobs": 0, "cpu": 0.0, "cpu_max": 0.0, "switches": 0, "blocks": 0}
        return self.tasks[path]

    def execute(self, job: Any) -> Generator[None, Any, Any]:
        glet = gevent.getcurrent()
        self.tracer.track(job)
        self.running[job.id] = job
        profiler = None
        if job.path in self.profile_tasks:
            profiler = cProfile.Profile()
            self.tracer.profile(glet, profiler)
            profiler.enable()
        try:
            return (yield)
        finally:
            if profiler is not None:
                profiler.disable()
                self.tracer.unprofile(glet)
            stats = self.tracer.untrack(job)
            self.running.pop(job.id, None)
            job.store(**self._fields(job, stats, profiler))

    def _fields(self, job: Any, stats: JobStats, profiler: cProfile.Profile | None) -> dict[str, Any]:
        task = self._task(job.path)
        task["jobs"] += 1
        task["cpu"] += stats.cpu
        task["cpu_max"] = max(task["cpu_max"], stats.cpu)
        task["switches"] += stats.switches
        fields: dict[str, Any] = {"time": round(stats.cpu, 6), "switches": stats.switches}
        if stats.worst is not None:
            fields["blocked"] = {"count": stats.blocks, **stats.worst.to_dict()}
        if profiler is not None:
            profile: dict[str, Any] = {"top": top_functions(profiler, self.profile_top)}
            try:
                profile["file"] = write_stats(profiler, self.profile_dir, f"{job.path}-{job.id}")
            except OSError as exc:
                self.log.warning("greentrace: could not write the profile of job %s to %s: %s", job.id,
                                 self.profile_dir, exc)
            fields["profile"] = profile
        return fields

    def _on_block(self, block: Block) -> None:
        self.blocks += 1
        job = block.job
        path = job.path if job is not None else None
        if path is not None:
            self._task(path)["blocks"] += 1
        if self.worst_block is None or block.seconds * 1000 > self.worst_block["ms"]:
            self.worst_block = {"path": path, "job": getattr(job, "id", None), "greenlet": block.greenlet,
                                **block.to_dict()}
        who = f"job {job.id} ({path})" if job is not None else f"greenlet {block.greenlet} (no job)"
        how = "blocked at" if block.sampled else "did not yield (blocking call not caught; it yielded at)"
        self.log.warning("greentrace: %s ran %.0f ms without yielding, blocking every other job; %s:\n%s",
                         who, block.seconds * 1000, how, "\n".join(block.stack))

    def report(self, report: dict[str, Any]) -> None:
        for entry in report.get("jobs") or []:
            job = self.running.get(entry.get("id"))
            if job is not None:
                stats = self.tracer.figures(job)
                entry["time"], entry["switches"] = round(stats.cpu, 6), stats.switches
        tasks = sorted(self.tasks.values(), key=lambda t: -t["cpu"])
        report["greentrace"] = {
            "switches": self.tracer.switch_count, "block_ms": self.block_ms, "blocks": self.blocks,
            "worst_block": self.worst_block,
            "tasks": [dict(t, cpu=round(t["cpu"], 6), cpu_max=round(t["cpu_max"], 6)) for t in tasks],
        }


@hookimpl
def mrq_add_options() -> list[Option]:
    worker = ("worker",)
    return [
        Option("trace_greenlets", bool, False,
               "Enable the greentrace plugin (as --plugins greentrace): per-job CPU time, switches, hub blocks.",
               commands=worker),
        Option("trace_greenlets_block_ms", float, 100.0,
               "greentrace: log a greenlet that runs longer than this without yielding (0 = off).",
               commands=worker),
        Option("profile_tasks", list, [],
               "greentrace: profile the runs of these task paths with cProfile (comma separated).",
               commands=worker),
        Option("profile_tasks_dir", str, "profiles",
               "greentrace: folder of the .pstats files of --profile_tasks and --profile."),
        Option("profile_tasks_top", int, 20,
               "greentrace: functions (by cumulative time) stored on a profiled job.", commands=worker),
        Option("profile", bool, False,
               "greentrace: profile the whole process with cProfile; print the top functions at exit."),
    ]


@hookimpl
def mrq_configure(config: Any) -> None:
    block_ms = config.get("trace_greenlets_block_ms")
    if block_ms is not None and float(block_ms) < 0:
        raise ConfigError(f"--trace_greenlets_block_ms must be >= 0 (0 turns block detection off), "
                          f"not {block_ms!r}.")
    if int(config.get("profile_tasks_top") or 0) < 1:
        raise ConfigError("--profile_tasks_top must be at least 1.")
    if config.get("profile") and config.get("profile_tasks"):
        raise ConfigError("--profile (the whole process) and --profile_tasks (some tasks) cannot be combined: "
                          "a thread has one profiler. Choose one.")
    if config.get("profile"):
        start_process_profile(str(config.get("profile_tasks_dir") or "profiles"))


@hookimpl
def mrq_worker_start(worker: Any) -> None:
    state = STATES[worker.id] = Greentrace(worker)
    state.tracer.install()
    worker.log.info("greentrace: tracing greenlets (blocks over %g ms%s)", state.block_ms,
                    f"; profiling {', '.join(sorted(state.profile_tasks))}" if state.profile_tasks else "")


# The innermost wrapper (trylast): what other plugins' wrappers do around the task (memtrace's objgraph pass, a
# gc.collect that holds the hub for tens of ms) is not counted as the job's.
@hookimpl(wrapper=True, trylast=True)
def mrq_job_execute(worker: Any, job: Any) -> Generator[None, Any, Any]:
    state = STATES.get(worker.id) if worker is not None else None
    if state is None:  # mrq-run in-process: nothing to trace
        return (yield)
    return (yield from state.execute(job))


@hookimpl
def mrq_worker_report(worker: Any, report: dict[str, Any]) -> None:
    state = STATES.get(worker.id)
    if state is not None:
        state.report(report)


@hookimpl
def mrq_worker_stop(worker: Any) -> None:
    state = STATES.get(worker.id)
    if state is not None:
        state.tracer.uninstall()
