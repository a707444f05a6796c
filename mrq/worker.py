"""The worker: dequeues batches of jobs and runs them concurrently in a gevent pool.

One loop: wait for free pool slots, pop up to that many ids in one Lua call
(priority order, recorded in flight atomically), fetch their documents in one
``find``, spawn them. Statuses and logs go through batched writers; a heartbeat
greenlet keeps the worker known alive in Redis and takes cancel requests; a
report greenlet writes the worker document.

Signals: SIGINT once = stop dequeuing, finish the running jobs, exit 0. SIGINT
twice or SIGTERM = running jobs are interrupted (status ``interrupt``) and put
back at the head of their queue.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import psutil
import pymongo
import pymongo.errors
import redis.exceptions
from bson import ObjectId

from mrq import runtime, signals
from mrq import status as st
from mrq.broker import RawPopped
from mrq.config import Config
from mrq.connections import ROUNDTRIPS, unreachable
from mrq.exceptions import CancelInterrupt, JobInterrupt, MaxConcurrencyInterrupt, StopRequested
from mrq.history import History
from mrq.indexes import ensure_indexes
from mrq.job import JOBS, Job, Outcome, RawJob, utcnow
from mrq.logger import JobLogHandler
from mrq.raw import raw_settings
from mrq.recovery import WORKER_DIED, death_entry, requeue_inflight
from mrq.task import TaskSettings, task_settings
from mrq.writer import StatusWriter

__all__ = ["Worker", "WORKERS"]

WORKERS = "mrq_workers"
_FETCH_FIELDS = ["path", "params", "queue", "status", "retry_count", "datequeued", "worker_deaths", "suspect"]


class Worker:
    """A worker process's state. ``Worker(config).work()`` runs until stopped and returns the exit code."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.id = ObjectId()
        self.name = config.get("name") or f"{socket.gethostname().split('.')[0]}.{os.getpid()}"
        self.log = logging.getLogger(f"mrq.worker.{self.name}")
        self.greenlets = max(1, int(config["greenlets"]))
        self.pool = gevent.pool.Pool(self.greenlets)
        self.queues: list[str] = list(config.get("queues") or ["default"])
        self.active_queues: list[str] = [q for q in self.queues]
        self.status = "init"
        self.counters: Counter[str] = Counter()
        self.jobs: dict[ObjectId, Job] = {}
        self.exitcode = 0
        self.datestarted = utcnow()
        self._started_at = time.monotonic()
        self._graceful = False
        self._stopping = False
        self.stop_reason: str | None = None
        self._memory_kill = False
        self._memory_kill_jobs = 0  # jobs running when --max_memory interrupted them
        self._epoch: str | None = None  # MRQ's marker key in Redis: it changes when Redis lost its data
        self._plugins_reported: list[dict[str, Any]] | None = None
        self.redis_is_new: bool | None = None  # the marker was missing: set for mrq_redis_data_lost's callers
        #: job id -> (queue, raw payload, score) of the jobs dequeued and not yet known to be acknowledged
        self._held: dict[str, tuple[str, str | None, float | None]] = {}
        self._cancel_early: set[ObjectId] = set()  # cancel requests read before their job started
        self._main: gevent.Greenlet | None = None
        self._services: list[gevent.Greenlet] = []
        self._settings: dict[str, TaskSettings] = {}
        self._fetch_fields = list(_FETCH_FIELDS)  # and those of mrq_worker_job_fields
        self._rotation = 0
        self._popped: set[str] = set()
        self._pushback = {name: rs.pushback_seconds for name, rs in (config.get("raw_queues") or {}).items()
                          if rs.pushback_seconds}
        self.plugins = config.plugin_manager  # type: ignore[attr-defined]
        self.broker = runtime.get_broker()
        self.db = runtime.connections.mongodb_jobs
        self.logs_db = runtime.connections.mongodb_logs
        self.writer = StatusWriter(self.db[JOBS], self.broker, float(config["flush_interval"]),
                                   on_written=self._on_written, worker_id=str(self.id))
        self.log_handler = JobLogHandler(self.id, plugins=self.plugins)
        self.log_handler.setFormatter(logging.Formatter(config["log_format"]))
        self._process = psutil.Process()
        self.history = History()

    # ------------------------------------------------------------------ lifecycle
    def work(self) -> int:
        """Run until stopped (signal, ``--max_jobs``, ``--max_time``, ``--max_memory``, burst end)."""
        runtime.set_current_worker(self)
        logging.getLogger("mrq.current").addHandler(self.log_handler)
        self._install_signals()  # also acts on a SIGINT/SIGTERM received since mrq-worker started
        waited = time.monotonic()
        while True:
            if self._graceful:  # stopped before it started, or while waiting for MongoDB: nothing to undo
                return self._stop_before_start()
            try:
                with pymongo.timeout(5):  # then look at the stop flag again
                    self.db.command("ping")
                ensure_indexes(self.db, self.logs_db, int(self.config.get("mongodb_logs_size", 0)))
                with gevent.Timeout(5, redis.exceptions.TimeoutError("no answer within 5 s")):
                    self.broker.redis.ping()
                break
            except pymongo.errors.PyMongoError as exc:
                if not isinstance(exc, pymongo.errors.ConnectionFailure) and not exc.timeout:
                    raise
                self.log.warning("%s; retrying (%.0f s so far)", unreachable(
                    "MongoDB", str(self.config["mongodb_jobs"]), "mongodb", "MRQ_MONGODB_JOBS", exc),
                    time.monotonic() - waited)
                gevent.sleep(1)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                self.log.warning("%s; retrying (%.0f s so far)", unreachable(
                    "Redis", str(self.config["redis"]), "redis", "MRQ_REDIS", exc), time.monotonic() - waited)
                gevent.sleep(1)
        if self._graceful:  # stopped during the ping or the indexes: no plugin was told of this worker yet
            return self._stop_before_start()
        try:
            self.plugins.hook.mrq_worker_start(worker=self)
            for fields in self.plugins.hook.mrq_worker_job_fields(worker=self):
                self._fetch_fields += [f for f in fields or [] if f not in self._fetch_fields]
        except Exception as exc:
            self.log.error("Worker could not start: %s: %s", type(exc).__name__, exc)
            return 1
        # The kernel's services, each in its own greenlet so that none waits on another: the heartbeat talks to
        # Redis only (a slow MongoDB must never make a live worker look dead), logs and reports to MongoDB.
        self._spawn_service("writer", self.writer.run, critical=True)
        self._spawn_service("marks", self.writer.run_marks, critical=True)
        self._spawn_service("heartbeat", self._heartbeat_loop, critical=True)
        self._spawn_service("logs", self._logs_loop, critical=True)
        self._spawn_service("report", self._report_loop, critical=True)
        self._spawn_service("watch", self._watch_loop, critical=True)
        if any(q.endswith("/") for q in self.queues):
            self._spawn_service("subqueues", self._subqueues_loop, critical=True)
        for funcs in self.plugins.hook.mrq_worker_services(worker=self):
            for func in funcs or []:
                self._spawn_service(getattr(func, "__name__", "service"), func, restart=True)
        self.log.info("Worker %s (%s) started: queues %s, %d greenlets", self.name, self.id,
                      " ".join(self.queues), self.greenlets)
        self._refresh_subqueues()
        self._main = gevent.spawn(self._loop)  # killed with StopRequested (a GreenletExit) to stop
        self._main.join()
        if self._main.exception is not None:
            self.log.error("Worker loop crashed: %r", self._main.exception)
            self.exitcode = 1
            self.stop_reason = self.stop_reason or "error"
        try:
            self.plugins.hook.mrq_worker_stopping(worker=self, reason=self.stop_reason or "signal")
        except Exception:
            self.log.exception("A plugin failed in mrq_worker_stopping")
        self._stop()
        return self.exitcode

    @property
    def stopping(self) -> bool:
        """True once the worker takes no new job (a first SIGINT, --max_jobs...): a long task may check it to end
        early, raising :class:`~mrq.exceptions.JobInterrupt` to be requeued (as ``mrq.examples.tasks.Crawl`` does)."""
        return self._graceful

    def stop(self, graceful: bool = True, reason: str = "signal") -> None:
        """Stop dequeuing; ``graceful=False`` also interrupts the running jobs (they are requeued).

        :param reason: passed to ``mrq_worker_stopping`` (the first reason given wins).
        """
        self.stop_reason = self.stop_reason or reason
        if not self._graceful:
            self._graceful = True
            self.log.info("Stopping: no new jobs; waiting for %d running job(s) (a second SIGINT/Ctrl-C, or "
                          "SIGTERM, interrupts them: they are requeued)", len(self.jobs))
            if self._main is not None and self._main is not gevent.getcurrent():
                self._main.kill(StopRequested, block=False)
        if not graceful and not self._stopping:
            self._stopping = True
            self.status = "killing"
            self.log.warning("Interrupting %d running job(s); they will be requeued", len(self.jobs))
            self.pool.kill(JobInterrupt, block=False)

    def _install_signals(self) -> None:
        """gevent handlers for SIGINT and SIGTERM; a stop signal recorded earlier (see :mod:`mrq.signals`:
        ``mrq-worker`` records them from its first line on) is acted on now. Outside the main thread (a worker
        embedded in a test) there are no signal handlers."""
        def on_sigint() -> None:
            self.stop(graceful=not self._graceful)

        signals.install({signal.SIGINT: on_sigint, signal.SIGTERM: lambda: self.stop(graceful=False)})

    def _stop_before_start(self) -> int:
        """Stopped before ``mrq_worker_start``: no job, service nor report to end; just forget the context."""
        self.log.info("Stopped before it started")
        logging.getLogger("mrq.current").removeHandler(self.log_handler)
        runtime.set_current_worker(None)
        return self.exitcode

    def _stop(self) -> None:
        self.status = "join"
        self.pool.join()
        elapsed = time.monotonic() - self._started_at
        done = self.counters["done"]
        self.log.info("Worker spent %.1f s performing %d jobs (%.1f jobs/s)", elapsed, done,
                      done / elapsed if elapsed else 0)
        try:
            self.plugins.hook.mrq_worker_stop(worker=self)
        except Exception:
            self.log.exception("A plugin failed in mrq_worker_stop")
        self.writer.close()
        if not self.writer.flush(timeout=60):
            self.log.error("Some status writes could not be stored; their jobs stay in flight and will be "
                           "requeued")
        self._flush_logs()
        self._requeue_leftovers()
        for g in self._services:
            g.kill(block=True, timeout=5)
        self.status = "stop"
        self._report()
        try:
            self.broker.forget_worker(str(self.id))
        except Exception:  # noqa: BLE001
            pass
        logging.getLogger("mrq.current").removeHandler(self.log_handler)
        runtime.set_current_worker(None)

    def _requeue_leftovers(self) -> None:
        """Ids this worker popped but did not finish (killed mid-dequeue): back to their queue."""
        try:
            mine = self.broker.inflight(str(self.id))
            if mine:
                ids = requeue_inflight(mine, str(self.id))
                self.log.warning("Requeued %d job(s) dequeued but not run", len(ids))
        except Exception:
            self.log.exception("Could not requeue leftover in-flight jobs (the cleaning plugin will)")

    def _requeue_orphans(self, older_than: float = 60.0) -> None:
        """Requeue ids recorded in flight on this worker that it does not know (a dequeue whose reply was
        lost and retried by the Redis client): without this they would wait for this worker to stop."""
        try:
            known = {str(i) for i in self.jobs} | self.writer.tracked_ids() | self._popped
            cutoff = time.time() - older_than
            orphans = [r for r in self.broker.inflight(str(self.id)) if r.job_id not in known and r.since < cutoff]
            if orphans:
                ids = requeue_inflight(orphans, str(self.id))
                self.counters["orphans_requeued"] += len(ids)
                self.log.warning("Requeued %d job(s) dequeued by this worker but never run: %s", len(ids), ids)
        except Exception as exc:  # noqa: BLE001
            self.log.warning("Orphan check failed: %s: %s", type(exc).__name__, exc)

    def _spawn_service(self, name: str, func: Callable[[], Any], restart: bool = False,
                       critical: bool = False) -> None:
        """Run ``func`` in a greenlet until the worker stops. A plugin's service (``restart``) that raises is
        logged and restarted after 5 s; a kernel service (``critical``) that dies stops the worker: it stops
        dequeuing, lets its jobs end, and exits with code 1, saying why (never a worker going on half-alive)."""
        def run() -> None:
            while True:
                try:
                    func()
                    return
                except gevent.GreenletExit:
                    raise
                except Exception:
                    if critical:
                        self.log.critical("Service %s died; stopping the worker (exit code 1)", name, exc_info=True)
                        self.exitcode = 1
                        self.stop(graceful=True, reason="service")
                        return
                    self.log.exception("Service %s failed%s", name, "; restarting in 5 s" if restart else "")
                    if not restart:
                        return
                    gevent.sleep(5)

        self._services.append(gevent.spawn(run))

    # ------------------------------------------------------------------ main loop
    def _loop(self) -> None:
        strategy = self.config["dequeue_strategy"]
        max_jobs, max_time = int(self.config["max_jobs"]), float(self.config["max_time"])
        max_latency = float(self.config["max_latency"])
        while not self._graceful:
            if max_time and time.monotonic() - self._started_at > max_time:
                self.log.info("--max_time %s reached", max_time)
                self.stop_reason = "max_time"
                break
            free = self._wait_for_slots()
            if max_jobs:  # jobs started: a job deferred for a max_concurrency slot, or skipped, is not one
                free = min(free, max_jobs - self.counters["started"])
                if free <= 0:
                    self.log.info("--max_jobs %d reached", max_jobs)
                    self.stop_reason = "max_jobs"
                    break
            self.status = "spawn"
            try:
                count = self._dequeue(free, strategy)
            except (gevent.GreenletExit, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - Redis or MongoDB down: wait and retry
                self.log.warning("Dequeue failed (%s: %s); retrying in 1 s", type(exc).__name__, exc)
                gevent.sleep(1)
                continue
            if count:
                continue
            if strategy == "burst":
                if self.pool.free_count() == self.greenlets and not len(self.writer):
                    self.stop_reason = "burst"
                    break
                self.status = "wait"
                self.broker.wait(self.active_queues, 0.1)  # running jobs may queue more
                continue
            self.status = "wait"
            try:
                woken_by = self.broker.wait(self.active_queues, max_latency)
                if woken_by and woken_by.endswith("/"):
                    self._refresh_subqueues()  # a push to a subqueue: maybe one this worker does not know yet
            except Exception as exc:  # noqa: BLE001
                self.log.warning("Waiting for jobs failed (%s: %s); retrying in 1 s", type(exc).__name__, exc)
                gevent.sleep(1)

    def _wait_for_slots(self) -> int:
        # Statuses waiting to be stored are jobs a SIGKILL would run again: keep the backlog small (MongoDB's
        # cost is per document, so bigger batches would not write faster).
        self.writer.wait_for_room(max(50, self.greenlets))
        if self.pool.free_count() == 0:
            self.status = "full"
            self.pool.wait_available()
            # Let the jobs that end in the same tick free their slots: dequeue in bigger batches.
            for _ in range(3):
                if self.pool.free_count() >= max(1, self.greenlets // 2):
                    break
                gevent.sleep(0)
        return self.pool.free_count()

    def _dequeue(self, count: int, strategy: str) -> int:
        queues = self.active_queues
        per_queue = count
        if strategy == "parallel" and len(queues) > 1:
            self._rotation = (self._rotation + 1) % len(queues)
            queues = queues[self._rotation:] + queues[:self._rotation]
            per_queue = max(1, -(-count // len(queues)))
        popped, raw = self.broker.dequeue_all(str(self.id), queues, count, per_queue, self._pushback)
        if not popped and not raw:
            return 0
        self.counters["dequeued"] += len(popped) + len(raw)
        self._popped = {i for _, i in popped} | {item.job_id for item in raw}  # not started yet: see _kill_job
        for queue, sid in popped:
            self._held[sid] = (queue, None, None)
        for item in raw:
            self._held[item.job_id] = (item.queue, item.payload, item.score)
        jobs = self._regular_jobs(popped) if popped else []
        if raw:
            jobs += self._raw_jobs(raw)
        if jobs:
            try:
                self.plugins.hook.mrq_jobs_dequeued(worker=self, jobs=jobs)
            except Exception:
                self.log.exception("A plugin failed in mrq_jobs_dequeued; the jobs run anyway")
        suspect = next((j for j in jobs if j.data and j.data.get("suspect")), None)
        if suspect is not None:
            jobs = self._isolate(suspect, jobs)
        now = utcnow()
        for job in jobs:
            assert job.id is not None
            settings = self._settings_of(job.path)
            job.settings = settings
            if settings.max_concurrency and not self._acquire(job, settings):
                continue
            if job.raw is None or job.raw.stores(st.STARTED):
                self.writer.started(job.id, {"status": st.STARTED, "datestarted": now, "dateupdated": now,
                                             "worker": self.id}, insert=job.raw.insert(job) if job.raw else None)
            self.jobs[job.id] = job
            self.counters["started"] += 1
            self.pool.spawn(self._perform, job, settings)
        self._popped = set()
        # A kill request for a job of this batch that did not start (skipped, parked, pushed back) is void: it
        # must not stop a later run of the same job (requeued, retried) on this worker.
        self._cancel_early = {i for i in self._cancel_early if i in self.jobs}
        if suspect is not None:
            self.pool.join()  # it runs alone: nothing else is dequeued until it ends
        return len(popped) + len(raw)

    def _isolate(self, suspect: Job, jobs: list[Job]) -> list[Job]:
        """A suspect job (running when a worker died with other jobs, see :mod:`mrq.recovery`) runs alone, so that
        if it kills this worker too, it is the only job in flight and the death is counted against it alone: the
        other jobs of the batch go back to their queue, the running ones end, every end is stored, then it runs.
        """
        assert suspect.id is not None
        for job in jobs:
            if job is suspect:
                continue
            if job.raw is None:
                self.writer.acknowledge(str(job.id), push_back_to=job.queue)
            else:
                self.writer.finished(job.id, Outcome(st.QUEUED, raw_push=job.raw.push_back()), store=False)
        self.log.warning("Job %s %s was running when a worker died with other jobs: it runs alone on this worker",
                         suspect.id, suspect.path)
        self.pool.join()
        if not self.writer.flush(timeout=60):  # the others must not look in flight here if it kills this worker
            self.log.warning("Statuses not stored before running suspect job %s alone", suspect.id)
        return [suspect]

    def _regular_jobs(self, popped: list[tuple[str, str]]) -> list[Job]:
        docs = self._fetch([ObjectId(i) for _, i in popped])
        jobs: list[Job] = []
        for queue, sid in popped:
            oid = ObjectId(sid)
            doc = docs.get(oid)
            if doc is None:
                self.log.warning("Job %s popped from queue %s has no document in %s (deleted or expired); "
                                 "dropped", sid, queue, JOBS)
                self.writer.acknowledge(sid)
                continue
            if doc.get("status") not in st.RUNNABLE_STATUSES:
                self.counters["skipped"] += 1
                self.writer.acknowledge(sid)
                continue
            if not self._allowed(doc.get("path", "")):
                self.counters["pushed_back"] += 1  # whitelist/blacklist: no status change
                self.writer.acknowledge(sid, push_back_to=queue)
                continue
            jobs.append(Job(oid, doc))
        return jobs

    def _raw_jobs(self, popped: list[RawPopped]) -> list[Job]:
        """Raw payloads become jobs through their queue's job_factory; nothing is read from MongoDB."""
        jobs: list[Job] = []
        now = utcnow()
        for item in popped:
            settings = raw_settings(item.queue, self.config)
            assert settings is not None  # checked at start for every raw queue of the worker
            raw = RawJob(item.queue, item.payload, settings, item.score)
            try:
                spec = settings.job_factory(item.payload)
                path, params = spec["path"], dict(spec.get("params") or {})
            except Exception as exc:  # noqa: BLE001 - the job fails, with the factory's traceback
                raw.error = exc
                path, params = f"{item.queue.split('/', 1)[0]}.job_factory", {"payload": item.payload}
            if raw.error is None and not self._allowed(path):
                self.counters["pushed_back"] += 1
                self.writer.finished(ObjectId(item.job_id), Outcome(st.QUEUED, raw_push=raw.push_back()), store=False)
                continue
            data = {"path": path, "params": params, "queue": settings.retry_queue, "raw_queue": item.queue,
                    "status": st.STARTED, "retry_count": 0, "datequeued": now}
            job = Job(ObjectId(item.job_id), data)
            job.raw = raw
            jobs.append(job)
        return jobs

    def _acquire(self, job: Job, settings: TaskSettings) -> bool:
        """Take a slot of the task's ``max_concurrency``. When they are all taken, by default the job waits: it is
        parked in its queue's delayed set and the task's waiting set in one atomic step (no MongoDB write, not a
        retry; a finishing job of the task wakes it, a 5-10 s fallback too), a raw job in its raw queue's delayed
        set with its payload. With ``on_max_concurrency = "fail"`` it ends as ``maxconcurrency``, as in the
        original MRQ."""
        assert job.id is not None
        wait = settings.on_max_concurrency == "wait"
        defer_to, parked = (job.queue, None) if wait else (None, None)
        if wait and job.raw is not None:
            # A timed set with pushback_seconds keeps its member (re-scored): the job comes back by itself.
            keeps = self._pushback.get(job.raw.queue.split("/", 1)[0])
            defer_to = None if keeps else job.raw.queue
            parked = None if keeps else self.broker.parked_raw(str(job.id), job.raw.payload, job.raw.score)
        if self.broker.acquire(job.path, str(job.id), settings.max_concurrency, settings.timeout + 30,
                               defer_to=defer_to, parked=parked):
            return True
        if wait:
            self.counters["deferred"] += 1
            if defer_to is None:  # not parked: only its in-flight record goes
                self.writer.acknowledge(str(job.id))
            return False
        job.exception = MaxConcurrencyInterrupt(f"max_concurrency={settings.max_concurrency} reached")
        job.traceback = repr(job.exception)
        outcome = job._complete(Outcome(st.MAXCONCURRENCY))
        outcome.release = None
        self._finish(job, outcome)
        self.counters[st.MAXCONCURRENCY] += 1
        return False

    def _allowed(self, path: str) -> bool:
        whitelist, blacklist = self.config.get("task_whitelist"), self.config.get("task_blacklist")
        if whitelist:
            return path in whitelist
        return not (blacklist and path in blacklist)

    def _fetch(self, ids: list[ObjectId]) -> dict[ObjectId, dict[str, Any]]:
        while True:
            try:
                return {d["_id"]: d for d in self.db[JOBS].find({"_id": {"$in": ids}}, self._fetch_fields)}
            except Exception as exc:  # noqa: BLE001 - MongoDB down: the ids stay in flight, retry
                self.log.warning("Fetching %d jobs failed (%s: %s); retrying", len(ids), type(exc).__name__, exc)
                gevent.sleep(1)

    def _settings_of(self, path: str) -> TaskSettings:
        if path not in self._settings:
            self._settings[path] = task_settings(path, self.config)
        return self._settings[path]

    def _perform(self, job: Job, settings: TaskSettings) -> None:
        assert job.id is not None
        try:
            if job.id in self._cancel_early:  # cancelled between its dequeue and now
                self._cancel_early.discard(job.id)
                job.exception = CancelInterrupt("cancelled before it started")
                job.datestarted = time.time()
                outcome = job._complete(Outcome(st.CANCEL))
            elif job.raw is not None and job.raw.error is not None:
                outcome = job.fail_with(job.raw.error)
            else:
                outcome = job.perform(settings, worker=self)
            try:
                self.plugins.hook.mrq_job_finished(worker=self, job=job, status=outcome.status)
            except Exception:
                self.log.exception("A plugin failed in mrq_job_finished for job %s", job.id)
            self._finish(job, outcome)
            self.counters["done"] += 1
            self.counters[outcome.status] += 1
        finally:
            self.jobs.pop(job.id, None)
        if outcome.status == st.FAILED and not self.config.get("quiet"):
            self.log.error("Job %s %s failed:\n%s", job.id, job.path, job.traceback)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        """Hand a job's end to the status writer. A raw job's status is stored unless its queue's
        ``statuses_no_storage`` names it (and always once one of its statuses was stored); an interrupted raw job
        that stores nothing goes back into its raw queue."""
        assert job.id is not None
        if self._memory_kill and outcome.status == st.INTERRUPT:
            outcome = self._count_death(job)
        elif job.data and job.data.get("suspect") and outcome.status != st.INTERRUPT:
            outcome.set["suspect"] = False  # it ran alone and did not kill its worker
        raw = job.raw
        if raw is None:
            self.writer.finished(job.id, outcome)
            return
        store = raw.stores(outcome.status)
        if not store and outcome.requeue:
            outcome.requeue, outcome.raw_push = None, raw.push_back()
        self.writer.finished(job.id, outcome, insert=raw.insert(job) if store else None, store=store)

    def _count_death(self, job: Job) -> Outcome:
        """An interrupt for --max_memory counts as a worker death (see :mod:`mrq.recovery`) if the job ran alone;
        beside others, none of them is known to be the cause: each becomes a suspect, to run alone next time."""
        deaths = int((job.data or {}).get("worker_deaths") or 0) + 1
        limit = int(self.config.get("max_worker_deaths") or 0)
        why = (f"Interrupted: the worker's memory ({self.memory_mb()} MB) stayed above --max_memory "
               f"{self.config.get('max_memory')} MB while this job ran")
        if self._memory_kill_jobs > 1:
            outcome = job._complete(Outcome(st.INTERRUPT, requeue=job.queue))
            outcome.set["suspect"] = True
            outcome.push_history = death_entry(self.id, f"{why} with {self._memory_kill_jobs - 1} other job(s): not "
                                               "counted against it; it runs alone next time.", utcnow())
            return outcome
        entry = death_entry(self.id, why + ".", utcnow())
        if limit and deaths >= limit:
            job.traceback = (f"This job was running when its worker died or blew its --max_memory {deaths} times "
                             "(--max_worker_deaths): it is probably the cause. It will not run again by itself: fix "
                             "it, then requeue it. The deaths are in traceback_history.")
            outcome = job._complete(Outcome(st.MAXWORKERDEATHS))
            outcome.set["exceptiontype"] = WORKER_DIED
            self.log.error("Job %s %s: %d worker deaths: %s, not requeued", job.id, job.path, deaths,
                           st.MAXWORKERDEATHS)
        else:
            outcome = job._complete(Outcome(st.INTERRUPT, requeue=job.queue))
        outcome.set["worker_deaths"] = deaths
        outcome.set["suspect"] = True
        outcome.push_history = entry
        return outcome

    def _on_written(self, written: list[tuple[ObjectId, str, dict[str, Any]]]) -> None:
        hook = self.plugins.hook.mrq_job_status_changed
        for job_id, status, fields in written:
            try:
                hook(job_id=job_id, status=status, fields=fields)
            except Exception:
                self.log.exception("A plugin failed in mrq_job_status_changed for job %s", job_id)
        try:
            self.plugins.hook.mrq_jobs_status_changed(changes=written)
        except Exception:
            self.log.exception("A plugin failed in mrq_jobs_status_changed for %d job(s)", len(written))

    def _refresh_subqueues(self) -> None:
        if not any(q.endswith("/") for q in self.queues):
            return
        known = self.broker.known_queues()
        active: list[str] = []
        for q in self.queues:
            active.append(q)
            if q.endswith("/"):
                active.extend(k for k in known if k.startswith(q) and k != q)
        self.active_queues = active

    # ------------------------------------------------------------------ background services
    def _subqueues_loop(self) -> None:
        interval = float(self.config["subqueues_refresh_interval"]) or 10.0
        while True:
            gevent.sleep(interval)
            try:
                self._refresh_subqueues()
            except Exception as exc:  # noqa: BLE001
                self.log.warning("Subqueue refresh failed: %s", exc)

    def _heartbeat_loop(self) -> None:
        """Redis only: the heartbeat must never wait on MongoDB (or its TTL could pass while the worker lives)."""
        interval, ttl = float(self.config["heartbeat_interval"]), float(self.config["heartbeat_ttl"])
        while True:
            try:
                kills, data_lost, epoch = self.broker.beat(str(self.id), ttl, self.status)
                for sid in kills:
                    self._kill_job(ObjectId(sid))
                first_beat = self._epoch is None
                if not first_beat and epoch != self._epoch:
                    self._record_inflight_again()  # at once: before a rebuild can requeue what this worker holds
                self._epoch = epoch
                if data_lost:  # in a greenlet of its own: never delays the next heartbeat
                    gevent.spawn(self._on_redis_data_lost, first_beat)
            except Exception as exc:  # noqa: BLE001 - Redis down: keep trying
                self.log.warning("Heartbeat failed: %s: %s", type(exc).__name__, exc)
            gevent.sleep(interval)

    def _record_inflight_again(self) -> None:
        """Redis lost its data, in-flight records included: write again those of the jobs this worker runs or has
        not acknowledged, so that the rebuild of the queues does not run them a second time elsewhere, and the
        max_concurrency slots of the jobs it runs, so that others do not take them meanwhile."""
        held = {str(i) for i in self.jobs} | self.writer.tracked_ids() | self._popped
        entries = [(i, *self._held[i]) for i in held if i in self._held]
        now = time.time()
        slots = {str(i): (job.path, now + job.settings.timeout + 30) for i, job in list(self.jobs.items())
                 if job.settings is not None and job.settings.max_concurrency}
        try:
            self.broker.record_inflight(str(self.id), entries, slots)
            self.log.warning("Redis lost its data: %d in-flight record(s) of this worker written again", len(entries))
        except Exception as exc:  # noqa: BLE001 - Redis down again: the cleaning plugin's checks still apply
            self.log.warning("Could not write in-flight records again: %s: %s", type(exc).__name__, exc)

    def _redis_is_new(self, first_beat: bool) -> bool:
        """MRQ's marker key was missing: is this Redis new to MRQ (rather than one that lost its data)? Yes when
        this worker had not seen the marker yet, no other worker reported to MongoDB before this one started
        (within the last hour: their documents expire) and no job is started there."""
        if not first_beat:
            return False
        try:
            others = self.db[WORKERS].find_one({"_id": {"$ne": self.id}, "datereported": {"$lt": self.datestarted}},
                                               {"_id": 1})
            started = self.db[JOBS].find_one({"status": st.STARTED}, {"_id": 1})
        except Exception:  # noqa: BLE001 - MongoDB down: assume the worst
            return False
        return others is None and started is None

    def _on_redis_data_lost(self, first_beat: bool = False) -> None:
        self.redis_is_new = self._redis_is_new(first_beat)
        if self.redis_is_new:
            self.log.info("MRQ's marker key set in Redis: no MRQ data there yet, and no other worker reported to "
                          "MongoDB within the last hour (a new database: nothing was lost); calling "
                          "mrq_redis_data_lost")
        else:
            self.log.warning("MRQ's marker key is missing from Redis while MRQ was using it (%s): Redis lost its "
                             "data (restarted without persistence, flushed, or evicted keys: set maxmemory-policy "
                             "noeviction); calling mrq_redis_data_lost (the cleaning plugin rebuilds the queues "
                             "from MongoDB)", "this worker saw the key before" if not first_beat else
                             "other workers reported to MongoDB within the last hour, or jobs are started")
        self.counters["redis_data_lost"] += 1
        try:
            self.plugins.hook.mrq_redis_data_lost(worker=self)
        except Exception:
            self.log.exception("A plugin failed in mrq_redis_data_lost")

    def _kill_job(self, job_id: ObjectId) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.greenlet is None:
            # Dequeued and not started yet: it will not run. A job that already ended is left alone (the request
            # came too late; it must not stop a later run of the job on this worker).
            if job is not None or str(job_id) in self._popped:
                self._cancel_early.add(job_id)
            return
        self.log.info("Cancelling running job %s %s", job_id, job.path)
        job.greenlet.kill(CancelInterrupt("cancelled while running"), block=False)

    def _flush_logs(self) -> None:
        try:
            self.log_handler.flush_to(self.logs_db)
        except Exception as exc:  # noqa: BLE001 - kept for the next flush
            self.log.warning("Storing job logs failed: %s: %s", type(exc).__name__, exc)

    def _logs_loop(self) -> None:
        interval = float(self.config["flush_interval"])
        while True:
            gevent.sleep(interval)
            self._flush_logs()

    def _report_loop(self) -> None:
        interval = float(self.config["report_interval"])
        while True:
            self._report()
            gevent.sleep(interval if interval > 0 else 3600)

    def _watch_loop(self) -> None:
        """Orphaned in-flight ids (Redis) and --max_memory, apart from the report so a slow MongoDB delays neither."""
        interval = float(self.config["report_interval"])
        max_memory = int(self.config.get("max_memory") or 0)
        while True:
            gevent.sleep(interval if interval > 0 else 3600)
            held = {str(i) for i in self.jobs} | self.writer.tracked_ids() | self._popped
            self._held = {i: v for i, v in self._held.items() if i in held}
            self._cancel_early = {i for i in self._cancel_early if str(i) in held}
            self._requeue_orphans()
            if not max_memory or self.memory_mb() <= max_memory:
                continue
            if not self._graceful:
                self.log.warning("Memory %d MB above --max_memory %d MB: stopping (no new jobs; the running ones "
                                 "have %.0f s to end)", self.memory_mb(), max_memory, interval)
                self.stop(graceful=True, reason="max_memory")
            elif self.jobs and not self._stopping:
                # Still above the limit one interval later, with jobs running: they are the likely cause. They are
                # interrupted and each counts a worker death, so that one that blows up memory every time ends as
                # maxworkerdeaths instead of taking down worker after worker.
                self.log.error("Memory %d MB still above --max_memory %d MB: interrupting %d running job(s) (a "
                               "worker death counted against a job running alone; several become suspects that "
                               "run alone next)", self.memory_mb(), max_memory, len(self.jobs))
                self._memory_kill = True
                self._memory_kill_jobs = len(self.jobs)
                self.stop(graceful=False, reason="max_memory")

    def memory_mb(self) -> int:
        return int(self._process.memory_info().rss / 1024 / 1024)

    def report(self) -> dict[str, Any]:
        """The worker document written to ``mrq_workers``."""
        now = utcnow()
        cpu = self._process.cpu_times()
        jobs = []
        for job in list(self.jobs.values()):
            stack = task_stack(job.greenlet.gr_frame, job.path) if job.greenlet is not None and \
                job.greenlet.gr_frame is not None else []
            jobs.append({"id": job.id, "path": job.path, "queue": job.queue, "progress": job.progress,
                         "datestarted": datetime.datetime.fromtimestamp(job.datestarted or 0, datetime.UTC)
                         .replace(tzinfo=None), "stack": stack[-20:]})
        # "wait" is for new jobs: a worker that waits for more while some run is running them ("run").
        status = "run" if self.status in ("wait", "spawn") and self.jobs else self.status
        report: dict[str, Any] = {
            "_id": self.id, "name": self.name, "status": status, "host": socket.gethostname(),
            "pid": os.getpid(), "queues": self.queues, "active_queues": self.active_queues,
            "greenlets": self.greenlets, "datestarted": self.datestarted, "datereported": now,
            "dateexpires": now + datetime.timedelta(seconds=max(3600.0, 3 * float(self.config["report_interval"]))),
            "config": {k: self.config.get(k) for k in ("greenlets", "max_jobs", "max_time", "max_memory",
                                                       "dequeue_strategy", "report_interval", "plugins",
                                                       "max_latency", "flush_interval")},
            "process": {"cpu": {"user": cpu.user, "system": cpu.system}, "mem": {"rss": self.memory_mb()}},
            "jobs": jobs,
            "plugins": self._plugins_report(),
            "counters": dict(self.counters) | {
                "redis_roundtrips": ROUNDTRIPS["redis"], "mongodb_roundtrips": ROUNDTRIPS["mongodb"],
                "statuses_written": self.writer.written, "status_batches": self.writer.batches,
                "status_writes_refused": self.writer.refused,
                "status_write_errors": self.writer.errors, "log_lines_dropped": self.log_handler.dropped,
                "log_lines_truncated": self.log_handler.truncated},
        }
        report["history"] = self.history.sample(self.counters, report["process"]["mem"]["rss"], cpu.user + cpu.system,
                                                self.active_queues, self.broker.sizes)  # no cost per job
        try:
            self.plugins.hook.mrq_worker_report(worker=self, report=report)
        except Exception:
            self.log.exception("A plugin failed in mrq_worker_report")
        return report

    def _plugins_report(self) -> list[dict[str, Any]]:
        """The plugins this worker runs, ``{"name", "version", "hooks"}`` (the dashboard's Plugins page)."""
        if self._plugins_reported is None:
            try:
                self._plugins_reported = [{"name": r["name"], "version": r["version"] or "", "hooks": r["hooks"]}
                                          for r in self.plugins.describe() if r["enabled"]]
            except Exception:  # noqa: BLE001 - a report must not fail for it
                self._plugins_reported = []
        return self._plugins_reported

    def _report(self) -> None:
        try:
            report = self.report()
            progress = [(j.id, j.progress) for j in self.jobs.values() if j.progress is not None]
            if progress:
                from pymongo import UpdateOne
                self.db[JOBS].bulk_write([UpdateOne({"_id": i, "status": st.STARTED}, {"$set": {"progress": p}})
                                          for i, p in progress], ordered=False)
            self.db[WORKERS].replace_one({"_id": self.id}, report, upsert=True)
        except Exception as exc:  # noqa: BLE001 - a missed report is not fatal
            self.log.warning("Worker report failed: %s: %s", type(exc).__name__, exc)


def task_stack(frame: Any, path: str) -> list[str]:
    """The stack of a running job (``traceback.format_stack``) starting at the task's own code, as its traceback
    does: the frames that led to it (the greenlet's, MRQ's, pluggy's) are left out. Without a frame of the task's
    module, only pluggy's frames are."""
    import sys

    frames = [f for f in traceback.extract_stack(frame) if "/pluggy/" not in f.filename]
    task_file = getattr(sys.modules.get(path.rpartition(".")[0]), "__file__", None) if path else None
    if task_file:
        task_file = os.path.abspath(task_file)
        first = next((i for i, f in enumerate(frames) if os.path.abspath(f.filename) == task_file), None)
        if first is not None:
            frames = frames[first:]
    return traceback.format_list(frames)
