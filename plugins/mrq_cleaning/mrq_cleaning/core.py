"""The cleaning passes, shared by the worker service and the ``mrq-run`` tasks.

Every pass starts from one question: *the job's document says it should be waiting or running, but does
Redis have a trace of it?* A trace is the id in its queue's list, in its queue's delayed set, or in the
in-flight hash. The checks are made in bulk:

* MongoDB: one ``find`` per status, served by the ``(status, queue)`` index, at most ``cleaning_max_scan``
  documents per status and pass;
* Redis: one ``HSCAN`` of the in-flight hash per pass, ``ZMSCORE`` per 1000 candidates, one pass over each
  queue list with ``LRANGE`` in chunks of 10,000 (stopped as soon as every candidate of that queue was
  seen);
* the ids still unaccounted for are pushed by one Lua script per 1000 ids that checks the in-flight hash,
  the delayed set and the whole list again *atomically* before pushing: the scans above are not atomic
  (a list moves while it is read in chunks), the push is, so no id is ever pushed twice by a pass.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import gevent
import redis.exceptions
from bson import ObjectId
from mrq import status as st
from mrq.broker import Broker
from mrq.context import connections, get_broker, get_current_config
from mrq.job import JOBS, utcnow
from mrq.recovery import requeue_dead_worker_jobs
from mrq.task import task_settings
from redis.cluster import RedisCluster

__all__ = ["Cleaner", "DEFAULTS", "push_if_absent", "chunks"]

log = logging.getLogger("mrq.cleaning")

#: Option defaults (without the ``cleaning_`` prefix); also used when the plugin is not enabled (mrq-run).
DEFAULTS: dict[str, Any] = {
    "dead_interval": 5.0,
    "lost_interval": 30.0,
    "started_interval": 300.0,
    "grace": 10.0,
    "timeout_margin": 300.0,
    "max_scan": 100_000,
    "rebuild": True,
}

_LIST_CHUNK = 10_000
#: Ids per ``$in`` query: some servers check an ``$in`` list against each document (SecantusDB: 1,000 ids take
#: 1.5 s, 250 ids 0.1 s), so long lists are split.
_IN_BATCH = 250
#: Seconds a pass's lock lives without being extended (it is extended every quarter of that while the pass runs).
_LEASE = 20.0
_BATCH = 1000

def push_if_absent(broker: Broker, queue: str, entries: Sequence[tuple[str, float, bool]],
                   where: str = "tail") -> list[str]:
    """:meth:`mrq.broker.Broker.push_unique`: push ids unless Redis already has them."""
    return broker.push_unique(queue, entries, where)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unix(value: Any, default: float) -> float:
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=datetime.UTC).timestamp()
    return default


class Cleaner:
    """Runs cleaning passes against the current MRQ context; counts what it requeues in ``counters``."""

    def __init__(self, config: Any = None, logger: logging.Logger | None = None,
                 counters: Counter[str] | None = None) -> None:
        self.config = config if config is not None else get_current_config()
        self.broker = get_broker()
        self.jobs = connections.mongodb_jobs[JOBS]
        self.log = logger or log
        self.counters: Counter[str] = counters if counters is not None else Counter()

    # ------------------------------------------------------------------ settings
    def opt(self, name: str) -> Any:
        value = self.config.get("cleaning_" + name)
        return DEFAULTS[name] if value is None else value

    @property
    def heartbeat_ttl(self) -> float:
        value = self.config.get("heartbeat_ttl")
        return 10.0 if value is None else float(value)

    def confirm_delay(self) -> float:
        """How long to wait before believing that a worker without heartbeat is dead (a worker reconnecting
        to a restarted Redis writes its heartbeat again within one heartbeat interval)."""
        value = self.config.get("heartbeat_interval")
        interval = 1.0 if value is None else float(value)
        return min(self.heartbeat_ttl, 2 * interval + 1)

    def redis_settled(self) -> bool:
        """False during the first 2 heartbeat TTLs after Redis (re)started: heartbeats may be missing then. On a
        Redis Cluster, the Redis asked is the node that holds MRQ's keys (all in one slot)."""
        r = self.broker.redis
        try:
            if isinstance(r, RedisCluster):  # a bare INFO goes to redis-py's default node
                info = r.info("server", target_nodes=r.get_node_from_key(self.broker.key("hb")))
            else:
                info = r.info("server")
        except redis.exceptions.ResponseError:  # INFO disabled (renamed command): trust the heartbeats
            return True
        return float(info.get("uptime_in_seconds", 1e9)) >= 2 * self.heartbeat_ttl

    # ------------------------------------------------------------------ locking
    def run_locked(self, name: str, func: Callable[[], Any], interval: float = 0,
                   blocking_timeout: float | None = None) -> Any:
        """Run ``func`` under the pass's Redis lock (one worker at a time), at most once per ``interval``
        seconds across all workers. Returns ``None`` if another worker holds the lock or ran it recently."""
        r = self.broker.redis
        last_key = self.broker.key("cleaning", "last", name)
        if interval and r.exists(last_key):
            return None
        # A short lease, extended while the pass runs: a worker killed in the middle of a pass (it may be running
        # the very job that kills it) holds the pass up for at most _LEASE seconds.
        lock = r.lock(self.broker.key("cleaning", "lock", name), timeout=_LEASE,
                      blocking=blocking_timeout is not None, blocking_timeout=blocking_timeout)
        if not lock.acquire():
            return None

        def keep() -> None:
            while True:
                gevent.sleep(_LEASE / 4)
                try:
                    lock.extend(_LEASE, replace_ttl=True)
                except redis.exceptions.RedisError:  # lost (expired) or Redis down: the pass goes on regardless
                    return

        keeper = gevent.spawn(keep)
        try:
            if interval and r.exists(last_key):
                return None
            start = time.perf_counter()
            result = func()
            if interval:
                r.set(last_key, "1", px=max(1, int(interval * 1000)))
            self.counters[f"pass_{name}"] += 1
            self.counters[f"pass_{name}_ms"] = int((time.perf_counter() - start) * 1000)
            return result
        finally:
            keeper.kill()
            try:
                lock.release()
            except redis.exceptions.LockError:  # expired meanwhile
                pass

    # ------------------------------------------------------------------ dead workers
    def requeue_dead_workers(self) -> int:
        """Ids in flight on workers whose heartbeat is gone (SIGKILL, OOM, lost machine): back at the head of
        their queue, their documents back to ``queued``. Returns how many were requeued."""
        records = self.broker.inflight()
        if not records:
            return 0
        workers = sorted({r.worker_id for r in records})
        alive = self.broker.alive(workers)
        dead = [w for w in workers if not alive[w]]
        if not dead:
            return 0
        if not self.redis_settled():
            self.log.info("cleaning: Redis restarted recently; dead workers are checked later")
            return 0
        gevent.sleep(self.confirm_delay())
        alive = self.broker.alive(dead)
        total = 0
        for worker_id in dead:
            if alive[worker_id]:
                continue
            mine = [r for r in records if r.worker_id == worker_id]
            for batch in chunks(mine, _BATCH):
                # The kernel counts the death on a job that ran alone (several: each runs alone next time) and
                # stops requeueing a job that killed --max_worker_deaths workers; raw jobs go back into their queue.
                result = requeue_dead_worker_jobs(batch, worker_id, self.config.get("max_worker_deaths"),
                                                  in_flight=len(mine))
                ids, poisoned = result["requeued"], result["poisoned"]
                self.counters["ends_stored"] += len(result["recovered"])  # ended: stored, not run again
                total += len(ids)
                self.counters["dead_worker"] += len(ids)
                self.counters["requeued"] += len(ids)
                self.counters["poisoned"] += len(poisoned)
                if ids:
                    self.log.warning("cleaning: requeued %d job(s) in flight on dead worker %s: %s", len(ids),
                                     worker_id, " ".join(ids))
        return total

    def _set_queued(self, oids: list[ObjectId], condition: dict[str, Any]) -> int:
        now, modified = utcnow(), 0
        for batch in chunks(oids, _IN_BATCH):
            res = self.jobs.update_many({"_id": {"$in": batch}, **condition},
                                        {"$set": {"status": st.QUEUED, "dateupdated": now}})
            modified += int(res.modified_count)
        return modified

    # ------------------------------------------------------------------ untracked jobs
    def requeue_untracked(self, statuses: Sequence[str], label: str, cutoff: datetime.datetime | None = None,
                          started_filter: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, int]:
        """Requeue jobs whose document has one of ``statuses`` (queued, retry, interrupt, started), last
        updated before ``cutoff`` (default: ``cleaning_grace`` seconds ago), and of which Redis has no trace.

        * ``queued``: pushed at the tail of their queue in ``datequeued`` order (or back into the delayed set
          if their ``datedue`` is ahead) — jobs lost between the MongoDB insert and the Redis push, or with
          Redis's data;
        * ``retry``: back into their queue's delayed set at ``dateretry`` (status kept);
        * ``interrupt`` and ``started``: at the head of their queue, status ``queued``; a ``started`` job whose
          worker still has a heartbeat is left alone (its first run may be alive), and so is every started
          job while Redis has just restarted.

        Returns ``{status: requeued}``.
        """
        if cutoff is None:
            cutoff = utcnow() - datetime.timedelta(seconds=float(self.opt("grace")))
        limit = int(self.opt("max_scan"))
        docs: list[dict[str, Any]] = []
        for status in statuses:
            query: dict[str, Any] = {"status": status, "dateupdated": {"$lt": cutoff}}
            found = list(self.jobs.find(query, projection=["queue", "status", "datequeued", "datedue", "dateretry",
                                                           "worker", "path", "datestarted"],
                                        limit=limit, batch_size=10_000))
            if len(found) >= limit:
                self.log.warning("cleaning: %s: %d %s jobs or more; only %d checked in this pass", label, limit,
                                 status, limit)
            if status == st.STARTED and started_filter is not None:
                found = [d for d in found if started_filter(d)]
            docs += found
        untracked = self._unchanged(self._untracked(docs))
        started = [d for d in untracked if d["status"] == st.STARTED]
        if started:
            untracked = [d for d in untracked if d["status"] != st.STARTED]
            if self.redis_settled():
                workers = sorted({str(d["worker"]) for d in started if d.get("worker")})
                alive = self.broker.alive(workers)
                for d in started:
                    if d.get("worker") and alive[str(d["worker"])]:
                        self.counters["skipped_alive"] += 1
                    else:
                        untracked.append(d)
        return self._push(untracked, label)

    def _unchanged(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The documents whose status did not change while Redis was scanned: a job dequeued and finished
        meanwhile left no trace in Redis, but it is not lost (pushing it again would only make a worker skip it)."""
        now: dict[Any, Any] = {}
        for batch in chunks([d["_id"] for d in docs], _IN_BATCH):
            now.update((d["_id"], d.get("status")) for d in self.jobs.find({"_id": {"$in": batch}}, {"status": 1}))
        return [d for d in docs if now.get(d["_id"]) == d["status"]]

    def _untracked(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The documents whose id is in no Redis structure (list, delayed set, in flight)."""
        if not docs:
            return []
        inflight = {r.job_id for r in self.broker.inflight()}
        by_queue: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for d in docs:
            sid = str(d["_id"])
            if sid not in inflight:
                by_queue[d.get("queue") or "default"][sid] = d
        r = self.broker.redis
        out: list[dict[str, Any]] = []
        for queue, cands in by_queue.items():
            dkey, qkey = self.broker.delayed_key(queue), self.broker.queue_key(queue)
            for batch in chunks(list(cands), _BATCH):
                for sid, score in zip(batch, r.zmscore(dkey, batch), strict=True):
                    if score is not None:
                        del cands[sid]
            start = 0
            while cands:
                chunk = r.lrange(qkey, start, start + _LIST_CHUNK - 1)
                if not chunk:
                    break
                for sid in chunk:
                    cands.pop(_s(sid), None)
                start += _LIST_CHUNK
            out += cands.values()
        return out

    def _push(self, docs: list[dict[str, Any]], label: str) -> dict[str, int]:
        now = time.time()
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for d in docs:
            queue = d.get("queue") or "default"
            if d["status"] == st.RETRY:
                groups[(queue, "delayed")].append(d)
            elif d["status"] == st.QUEUED:
                due = _unix(d.get("datedue"), 0)
                groups[(queue, "delayed" if due > now else "tail")].append(d)
            else:
                groups[(queue, "head")].append(d)
        counts: Counter[str] = Counter()
        for (queue, where), group in groups.items():
            group.sort(key=lambda d: (d.get("datequeued") or datetime.datetime.min, d["_id"]))
            entries = []
            for d in group:
                due = _unix(d.get("dateretry") if d["status"] == st.RETRY else d.get("datedue"), now)
                entries.append((str(d["_id"]), due, True))
            pushed = set(push_if_absent(self.broker, queue, entries, where))
            if not pushed:
                continue
            by_status: dict[tuple[str, Any], list[ObjectId]] = defaultdict(list)
            for d in group:
                if str(d["_id"]) in pushed:
                    by_status[(d["status"], d.get("worker"))].append(d["_id"])
            for (status, worker), oids in by_status.items():
                if status in (st.INTERRUPT, st.STARTED):
                    cond: dict[str, Any] = {"status": status}
                    if status == st.STARTED:
                        cond["worker"] = worker
                    self._set_queued(oids, cond)
                counts[status] += len(oids)
                self.counters[f"{label}_{status}"] += len(oids)
                self.counters["requeued"] += len(oids)
                self.log.warning("cleaning: %s: requeued %d %s job(s) of which Redis had no trace (%s of queue "
                                 "%s): %s", label, len(oids), status, where, queue, " ".join(map(str, oids)))
        return dict(counts)

    # ------------------------------------------------------------------ the passes
    def lost_pass(self, cutoff: datetime.datetime | None = None, label: str = "lost") -> dict[str, int]:
        """Every status that should have a trace in Redis: queued, retry, interrupt, started."""
        return self.requeue_untracked([st.QUEUED, st.RETRY, st.INTERRUPT, st.STARTED], label, cutoff)

    def started_pass(self) -> dict[str, int]:
        """``started`` jobs running longer than their timeout plus ``cleaning_timeout_margin`` and not running
        on a live worker (in flight on a dead one, or not in flight at all)."""
        dead = self.requeue_dead_workers()
        margin = float(self.opt("timeout_margin"))
        now = utcnow()
        timeouts: dict[str, float] = {}

        def too_old(doc: dict[str, Any]) -> bool:
            path = doc.get("path", "")
            if path not in timeouts:
                timeouts[path] = task_settings(path, self.config).timeout
            started = doc.get("datestarted")
            return started is None or (now - started).total_seconds() > timeouts[path] + margin

        counts = self.requeue_untracked([st.STARTED], "started", cutoff=now, started_filter=too_old)
        if dead:
            counts["dead_worker"] = dead
        return counts

    def rebuild(self, detected: datetime.datetime | None = None, new_redis: bool = False) -> dict[str, int]:
        """Redis lost its data (or this is the first start, ``new_redis``): push back every job whose document
        says it waits or runs and of which Redis has no trace; started jobs wait until Redis has been up for 2
        heartbeat TTLs (the regular lost pass takes them)."""
        detected = detected or utcnow()
        if new_redis:
            self.log.info("cleaning: first start on this Redis: checking that every job MongoDB says is waiting "
                          "is in its queue")
        else:
            self.log.warning("cleaning: Redis lost MRQ's data (its marker key is missing): rebuilding the queues "
                             "from MongoDB")
        gevent.sleep(self.confirm_delay())  # live workers write their heartbeats and pending statuses again
        counts = self.lost_pass(cutoff=detected, label="rebuild")
        self.log.info("cleaning: rebuild done: %s", counts or "nothing was missing")
        return counts

