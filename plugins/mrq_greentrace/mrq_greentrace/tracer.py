"""The greenlet tracer: CPU time and switches of each job's greenlets, and the runs that blocked the hub.

One function is called by greenlet at every switch (``greenlet.settrace``). It reads the thread's CPU
clock and the wall clock, charges the run that just ended to the job of the greenlet switched out
(``mrq.context.get_current_job(greenlet)``: a job's own greenlet and its subpool greenlets), and, when
that run lasted longer than the blocking threshold without yielding, records a :class:`Block`.

Where a greenlet blocked cannot be seen once it yields: its frame has moved on. So a watcher thread
(native, sleeping half the threshold between two looks, doing nothing else) looks at the switch counter;
when a run has lasted longer than the threshold, it samples the main thread's current frame
(``sys._current_frames``), which is the blocking call itself (``time.sleep``, a CPU loop, a
non-patched socket). The sample is attached to the block when the run ends.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import greenlet
from gevent import monkey
from mrq.context import get_current_job

__all__ = ["Block", "JobStats", "GreenletTracer"]

#: Frames kept in a block's stack.
STACK_LIMIT = 25


@dataclass
class Block:
    """A run of a greenlet that held the hub longer than the threshold."""

    seconds: float
    job: Any  # mrq.job.Job or None (a service greenlet)
    greenlet: str
    stack: list[str]
    #: True when the stack was sampled during the block (the blocking line); False when only the place
    #: where the greenlet finally yielded is known (a block shorter than the watcher could catch).
    sampled: bool

    @property
    def where(self) -> str:
        """``file:line in function`` of the innermost frame of the stack."""
        return self.stack[-1].strip().splitlines()[0] if self.stack else "?"

    def to_dict(self) -> dict[str, Any]:
        return {"ms": round(self.seconds * 1000, 1), "where": self.where, "sampled": self.sampled,
                "stack": self.stack}


@dataclass
class JobStats:
    """What one job's greenlets cost: CPU seconds, switches out, and blocks."""

    cpu: float = 0.0
    switches: int = 0
    blocks: int = 0
    worst: Block | None = None


def _format(summary: traceback.StackSummary) -> list[str]:
    return [f'{f.filename}:{f.lineno} in {f.name}\n    {(f.line or "").strip()}' for f in summary]


class GreenletTracer:
    """Install with :meth:`install` in the worker's thread; :meth:`track` each job while it runs.

    :param block_seconds: runs longer than this are blocks (0 disables block detection and the watcher).
    :param on_block: called with each :class:`Block`, soon after the run ended, from the hub (never
        inside the switch itself, where switching is forbidden).
    :param job_of: the job a greenlet works for, or None (default: ``mrq.context.get_current_job``).
    """

    def __init__(self, block_seconds: float = 0.1, on_block: Callable[[Block], None] | None = None,
                 job_of: Callable[[Any], Any] = get_current_job) -> None:
        self.block_seconds = block_seconds
        self.on_block = on_block
        self._job_of = job_of
        self.switch_count = 0
        self._stats: dict[Any, JobStats] = {}   # job -> stats, while tracked
        self._profiled: dict[Any, Any] = {}     # greenlet -> profiler, while profiled
        self._since = time.perf_counter()
        self._since_cpu = time.thread_time()
        self._current: Any = None
        self._hub: Any = None
        self._previous: Any = None
        self._installed = False
        self._sample: tuple[int, traceback.StackSummary] | None = None
        self._pending: list[Block] = []
        self._main_ident = 0
        self._watcher = 0  # generation of the watcher thread that should run (0 = none)
        self._block_done: tuple[int, float] = (-1, 0.0)  # (run, start) already recorded as a block (by untrack)

    # ------------------------------------------------------------------ install
    def install(self) -> None:
        """Start tracing switches (and the watcher thread) in the current thread."""
        if self._installed:
            return
        self._hub = gevent.get_hub()
        self._current = gevent.getcurrent()
        self._since, self._since_cpu = time.perf_counter(), time.thread_time()
        self._previous = greenlet.settrace(self._trace)
        self._installed = True
        if self.block_seconds > 0:
            self._watcher += 1
            self._main_ident = monkey.get_original("_thread", "get_ident")()
            start = monkey.get_original("_thread", "start_new_thread")
            start(self._watch, (self._watcher,))

    def uninstall(self) -> None:
        """Stop tracing; restores the trace function that was installed before."""
        if self._installed:
            greenlet.settrace(self._previous)
            self._installed = False
            self._watcher += 1  # the running watcher, if any, ends at its next look

    # ------------------------------------------------------------------ jobs
    def track(self, job: Any) -> JobStats:
        """Charge the runs of ``job``'s greenlets to a new :class:`JobStats` from now on (call it from the job's
        greenlet). What its greenlet did before in the run in progress (another plugin's wrapper: memtrace's
        objgraph pass) is not the job's: a block so far is recorded without a job, and the run starts again."""
        run, current, now = self.switch_count, self._current, time.perf_counter()
        if current is not None and current is gevent.getcurrent():
            if now - self._since >= self.block_seconds > 0 and self._block_done != (run, self._since):
                self._blocked(current, None, now - self._since, run, sys._getframe(1))
            self._since, self._since_cpu, self._sample = now, time.thread_time(), None
        stats = self._stats[job] = JobStats()
        return stats

    def untrack(self, job: Any) -> JobStats:
        """Stop charging ``job``; its stats include the run in progress (call it from the job's greenlet).

        A run in progress that already lasted longer than the threshold is recorded as a block now: the
        job's figures are stored before that run ends.
        """
        run, current = self.switch_count, self._current
        if (current is gevent.getcurrent() and time.perf_counter() - self._since >= self.block_seconds > 0
                and self._block_done != (run, self._since)):
            self._blocked(current, job, time.perf_counter() - self._since, run, sys._getframe(1))
            self._block_done = (run, self._since)
        stats = self.figures(job)
        self._stats.pop(job, None)
        return stats

    def figures(self, job: Any) -> JobStats:
        """The stats of a tracked job so far, the run in progress included (call from any greenlet)."""
        stats = self._stats.get(job) or JobStats()
        current = self._current
        if current is not None and current and self._job_of(current) is job:
            return JobStats(stats.cpu + time.thread_time() - self._since_cpu, stats.switches, stats.blocks,
                            stats.worst)
        return stats

    def profile(self, glet: Any, profiler: Any) -> None:
        """Run ``profiler`` only while ``glet`` runs (it must be enabled by the caller, in ``glet``)."""
        self._profiled[glet] = profiler

    def unprofile(self, glet: Any) -> None:
        self._profiled.pop(glet, None)

    # ------------------------------------------------------------------ the switch
    def _trace(self, event: str, args: Any) -> None:
        now_cpu, now = time.thread_time(), time.perf_counter()
        if event in ("switch", "throw"):
            origin, target = args
            run = self.switch_count  # the run that ends now
            self.switch_count = run + 1
            job = self._job_of(origin) if origin else None
            if job is None and origin is not self._hub:
                job = self._spawner_job(origin)
            if job is not None:
                stats = self._stats.get(job)
                if stats is not None:
                    stats.cpu += now_cpu - self._since_cpu
                    stats.switches += 1
            ran = now - self._since
            if ran >= self.block_seconds > 0 and origin is not self._hub and self._block_done != (run, self._since):
                self._blocked(origin, job, ran, run, sys._getframe(1))
            if self._profiled:
                if origin in self._profiled:
                    sys.setprofile(None)  # pause without cProfile's disable(), which would end every frame
                profiler = self._profiled.get(target)
                if profiler is not None:
                    profiler.enable()
            self._current = target
            self._since, self._since_cpu = now, now_cpu
        if self._previous is not None:
            self._previous(event, args)

    def _spawner_job(self, glet: Any, depth: int = 4) -> Any:
        """The job of the nearest greenlet that spawned ``glet`` (gevent's ``spawning_greenlet``): a subpool
        greenlet (spawned by the pool's IMap greenlet, spawned by the job's) is bound to its job only while
        it runs its function, so its last run ends unbound."""
        for _ in range(depth):
            ref = getattr(glet, "spawning_greenlet", None)
            glet = ref() if ref is not None else None
            if glet is None:
                return None
            job = self._job_of(glet) if glet else None
            if job is not None:
                return job
        return None

    def _blocked(self, glet: Any, job: Any, ran: float, run: int, frame: Any) -> None:
        """Record that run number ``run`` of ``glet`` held the hub ``ran`` seconds; ``frame`` is where it is now."""
        sample = self._sample
        if sample is not None and sample[0] == run:
            stack, sampled = _format(sample[1]), True
        else:  # not caught in the act: only where it is now (where it yields) is known
            stack, sampled = _format(traceback.extract_stack(frame, limit=STACK_LIMIT)), False
        stats = self._stats.get(job) if job is not None else None
        if stats is None:  # its greenlet was outside the task (another plugin's wrapper): the job is not to blame
            job = None
        block = Block(ran, job, repr(glet), stack, sampled)
        if stats is not None:
            stats.blocks += 1
            if stats.worst is None or ran > stats.worst.seconds:
                stats.worst = block
        if self.on_block is not None:
            if not self._pending:
                self._hub.loop.run_callback(self._report_blocks)
            self._pending.append(block)

    def _report_blocks(self) -> None:
        pending, self._pending = self._pending, []
        for block in pending:
            try:
                assert self.on_block is not None
                self.on_block(block)
            except Exception:  # noqa: BLE001 - a reporting error must not break the hub
                traceback.print_exc()

    # ------------------------------------------------------------------ the watcher thread
    def _watch(self, generation: int) -> None:
        sleep = monkey.get_original("time", "sleep")
        period = max(0.005, self.block_seconds / 2)
        while generation == self._watcher:
            sleep(period)
            count, since, current = self.switch_count, self._since, self._current
            if current is self._hub or (self._sample is not None and self._sample[0] == count):
                continue
            if time.perf_counter() - since >= period:  # a block in the making: sample it now
                frame = sys._current_frames().get(self._main_ident)
                if frame is not None and count == self.switch_count:
                    summary = traceback.StackSummary.extract(traceback.walk_stack(frame), limit=STACK_LIMIT,
                                                             lookup_lines=False)
                    summary.reverse()
                    self._sample = (count, summary)
                del frame
