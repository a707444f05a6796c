"""The scheduler's state and its check: a Redis lock, one document per entry in ``mrq_scheduled_jobs``.

Workers with different ``SCHEDULER_TASKS`` share the collection (a rolling deploy, several worker pools):
a process never deletes an entry because its own config does not list it. Instead each process
**declares** its entries every :func:`declare_period` seconds: it inserts the missing ones and moves
their ``seen`` time forward (``$max``). An entry that no worker declared for ``orphan_ttl`` seconds is
deleted, its state with it.

Each check (every ``--scheduler_interval`` seconds, in every worker that enables the plugin):

1. declare this process's entries, if the last declaration is older than :func:`declare_period`;
2. take the non-blocking Redis lock ``{prefix}:scheduler:lock``; if another process holds it, stop here;
3. delete the entries nobody declared for ``orphan_ttl`` (at most once per declaration period);
4. for each of this process's entries whose ``next_run`` is due: **claim** the period with a
   compare-and-set on ``next_run`` (``update_one({"_id": ..., "next_run": old}, {"$set": {"next_run":
   new, ...}})``), and queue the job only if the claim matched.

A process queues only the entries of its own config (it has their definition); an entry therefore runs
as long as one live worker declares it, and stops when the last one stops.

Definitions with the same ``name`` are versions of one entry: of those declared by a live worker (``seen``
within :data:`LIVE_PERIODS` declaration periods), the one **first declared last** (``datecreated``, then
the highest hash) runs; the processes declaring another one pass its periods without queueing them. A
process (re)starting with an older config thus never brings an older definition back while a newer one
is live, and a rollback takes over once the newer definition's workers are gone. The lock keeps the work in one
process at a time; the compare-and-set alone guarantees that a period is queued at most once even if two
processes overlap (a lock that expired during a slow check). Claiming *before* queueing means a process
killed between the two (SIGKILL, a power cut: a few milliseconds) misses that period instead of running
it twice. If ``queue_job`` raises, the claim is reverted, so the next check tries again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bson import ObjectId

from mrq_scheduler.cron import UTC
from mrq_scheduler.entries import Entry, parse_entries

__all__ = ["Scheduler", "COLLECTION", "NOW_ENV", "ORPHAN_TTL", "declare_period", "min_orphan_ttl", "now"]

COLLECTION = "mrq_scheduled_jobs"
#: Default ``--scheduler_orphan_ttl``: seconds after which an entry that no worker declares is deleted.
ORPHAN_TTL = 7 * 86400.0
#: A definition declared within this many declaration periods has a live worker (for named entries).
LIVE_PERIODS = 3
_NEVER = dt.datetime.min
#: Testing aid: an ISO datetime (naive = UTC) at which the scheduler's clock starts in this process;
#: it then advances with the real (monotonic) time.
NOW_ENV = "MRQ_SCHEDULER_NOW"
_fake_clock: dict[str, Any] = {}


def now() -> dt.datetime:
    """The scheduler's clock: an aware UTC datetime (see :data:`NOW_ENV`)."""
    fake = os.environ.get(NOW_ENV)
    if not fake:
        return dt.datetime.now(UTC)
    if _fake_clock.get("text") != fake:
        start = dt.datetime.fromisoformat(fake.replace("Z", "+00:00"))
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
        _fake_clock.update(text=fake, start=start, monotonic=time.monotonic())
    return _fake_clock["start"] + dt.timedelta(seconds=time.monotonic() - _fake_clock["monotonic"])


def declare_period(interval: float) -> float:
    """Seconds between two declarations of a process's entries, for a ``--scheduler_interval`` of
    ``interval``: ``max(10, interval)`` (a declaration happens in a check)."""
    return max(10.0, float(interval))


def min_orphan_ttl(interval: float) -> float:
    """The smallest ``--scheduler_orphan_ttl`` allowed: 6 declaration periods, so that the entries of a
    live worker (declared every period, possibly a check late) are never taken for orphans."""
    return 6 * declare_period(interval)


def to_mongo(value: dt.datetime) -> dt.datetime:
    """Aware datetime -> naive UTC with MongoDB's millisecond precision (what reads give back)."""
    value = value.astimezone(UTC).replace(tzinfo=None)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def from_mongo(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=UTC)


class Scheduler:
    """The scheduler of one process.

    :param entries: the validated entries (:func:`mrq_scheduler.entries.parse_entries`).
    :param db: the jobs database (``mrq.context.connections.mongodb_jobs``).
    :param broker: ``mrq.context.get_broker()``: gives the Redis client and the prefixed lock key.
    :param interval: seconds between checks of :meth:`run_forever`.
    :param lock_timeout: seconds after which a lock held by a dead process expires.
    :param orphan_ttl: seconds after which an entry that no worker declares is deleted
        (at least :func:`min_orphan_ttl`).
    """

    def __init__(self, entries: Sequence[Entry], db: Any, broker: Any, interval: float = 1.0,
                 lock_timeout: float | None = None, log: logging.Logger | None = None,
                 orphan_ttl: float = ORPHAN_TTL) -> None:
        self.entries = {e.hash: e for e in entries}
        self.collection = db[COLLECTION]
        self.broker = broker
        self.interval = float(interval)
        self.lock_timeout = float(lock_timeout or max(5.0, 5 * self.interval))
        self.log = log or logging.getLogger("mrq.scheduler")
        self.declare_every = declare_period(self.interval)
        if not orphan_ttl >= min_orphan_ttl(self.interval):
            raise ValueError(f"orphan_ttl={orphan_ttl!r} s is shorter than {min_orphan_ttl(self.interval):g} s "
                             f"(6 declaration periods of {self.declare_every:g} s): give a longer one")
        self.orphan_ttl = float(orphan_ttl)
        self.declared_at: dt.datetime | None = None
        self.collected_at: dt.datetime | None = None
        self.queued: Counter[str] = Counter()  # by entry hash, in this process
        self.stats: Counter[str] = Counter()
        self.last_check: dt.datetime | None = None
        self.next_runs: dict[str, dt.datetime] = {}
        #: this process's named entries that a newer live definition of their name supersedes: hash -> its doc
        self.superseded: dict[str, dict[str, Any]] = {}
        self._stopping = False
        self._busy = False

    @classmethod
    def from_config(cls, config: Any, log: logging.Logger | None = None) -> Scheduler:
        """A scheduler for ``config`` (``scheduler_tasks``, ``scheduler_interval``, ``scheduler_timezone``),
        on the connections of the current MRQ context."""
        from mrq.context import connections, get_broker

        entries = parse_entries(config.get("scheduler_tasks"), config.get("scheduler_timezone") or "UTC")
        return cls(entries, connections.mongodb_jobs, get_broker(), float(config.get("scheduler_interval") or 1.0),
                   log=log, orphan_ttl=float(config.get("scheduler_orphan_ttl") or ORPHAN_TTL))

    @property
    def lock_key(self) -> str:
        return str(self.broker.key("scheduler", "lock"))

    def ensure_index(self) -> None:
        self.collection.create_index([("hash", 1)], unique=True)
        self.collection.create_index([("name", 1)])

    # ------------------------------------------------------------------ one check
    def check(self, at: dt.datetime | None = None) -> list[ObjectId] | None:
        """One pass: declare this process's entries (when due), then under the lock delete the orphans (when
        due) and queue what is due at ``at`` (default: now()).

        Returns the ids of the jobs queued, or ``None`` if another process held the lock.
        """
        from redis.exceptions import LockError

        at = at or now()
        self.stats["checks"] += 1
        if self._elapsed(self.declared_at, at) >= self.declare_every:
            self.declare(at)
        lock = self.broker.redis.lock(self.lock_key, timeout=self.lock_timeout, blocking=False)
        if not lock.acquire(blocking=False):
            self.stats["lock_busy"] += 1
            return None
        try:
            if self._elapsed(self.collected_at, at) >= self.declare_every:
                self.collect(at)
            return self.queue_due(at)
        finally:
            self.last_check = to_mongo(at)
            try:
                lock.release()
            except LockError:
                self.log.warning("scheduler: a check took longer than the lock timeout (%.0f s)", self.lock_timeout)

    @staticmethod
    def _elapsed(since: dt.datetime | None, at: dt.datetime) -> float:
        return float("inf") if since is None else (at - since).total_seconds()

    def declare(self, at: dt.datetime) -> list[str]:
        """Declare this process's entries at ``at``: insert the missing ones (new entries, or entries deleted by
        another process), and move the ``seen`` time of all of them forward. Never touches other entries.

        Safe without the lock (unique index on ``hash``, ``$max``). Returns the hashes inserted.
        """
        from pymongo.errors import DuplicateKeyError

        if self.declared_at is None:
            self.ensure_index()
        self.declared_at = at
        hashes = list(self.entries)
        if not hashes:
            return []
        seen = to_mongo(at)
        refreshed = self.collection.update_many({"hash": {"$in": hashes}}, {"$max": {"seen": seen}})
        if refreshed.matched_count == len(hashes):
            return []
        stored = {d["hash"] for d in self.collection.find({"hash": {"$in": hashes}}, {"hash": 1})}
        added = [h for h in hashes if h not in stored]
        for h in added:
            entry = self.entries[h]
            doc = {"hash": h, "name": entry.name, "path": entry.path, "params": entry.params, "queue": entry.queue,
                   "schedule": entry.schedule, "timezone": entry.timezone, "description": entry.describe(),
                   "datecreated": seen, "seen": seen, "next_run": to_mongo(self.first_run(entry, at)),
                   "last_run": None, "datelastqueued": None, "last_job": None, "queued_count": 0}
            try:
                self.collection.insert_one(doc)
            except DuplicateKeyError:  # another process inserted it meanwhile: keep its state
                self.collection.update_one({"hash": h}, {"$max": {"seen": seen}})
        self.log.info("scheduler: %d entr(ies) of this worker's config added to %s (%d already there)",
                      len(added), COLLECTION, len(hashes) - len(added))
        return added

    def first_run(self, entry: Entry, at: dt.datetime) -> dt.datetime:
        """When a newly declared entry first runs. A new definition of a named interval entry keeps the entry's
        rhythm: one interval after the last run of any definition of that name (at once if that is past)."""
        if entry.name is not None and entry.interval is not None:
            last = self.collection.find_one({"name": entry.name, "last_run": {"$ne": None}}, {"last_run": 1},
                                            sort=[("last_run", -1)])
            if last is not None:
                return max(at, from_mongo(last["last_run"]) + dt.timedelta(seconds=entry.interval))
        return entry.first_run(at)

    def collect(self, at: dt.datetime) -> list[str]:
        """Delete the entries that no worker declared for ``orphan_ttl`` seconds (never this process's own).

        Returns the hashes deleted.
        """
        self.collected_at = at
        # documents written by mrq-scheduler 1.0 have no "seen": their grace period starts now
        self.collection.update_many({"seen": {"$exists": False}}, {"$set": {"seen": to_mongo(at)}})
        cutoff = to_mongo(at - dt.timedelta(seconds=self.orphan_ttl))
        orphans = list(self.collection.find({"seen": {"$lt": cutoff}, "hash": {"$nin": list(self.entries)}},
                                            {"hash": 1, "path": 1, "description": 1, "seen": 1}))
        if not orphans:
            return []
        # "seen" again in the filter: an entry declared again since the find is kept
        self.collection.delete_many({"_id": {"$in": [d["_id"] for d in orphans]}, "seen": {"$lt": cutoff}})
        self.log.info("scheduler: deleted %d entr(ies) that no worker declared for %g s: %s", len(orphans),
                      self.orphan_ttl, ", ".join(f"{d['path']} ({d.get('description')}, last declared "
                                                 f"{d['seen'].isoformat()} UTC)" for d in orphans))
        return [d["hash"] for d in orphans]

    def due(self, at: dt.datetime) -> list[dict[str, Any]]:
        """The documents of this process's entries whose run is due at ``at`` (superseded ones included: see
        :attr:`superseded`, updated here)."""
        query: dict[str, Any] = {"hash": {"$in": list(self.entries)}}
        names = sorted({e.name for e in self.entries.values() if e.name is not None})
        if names:
            query = {"$or": [query, {"name": {"$in": names}}]}
        docs = list(self.collection.find(query))
        mine = [d for d in docs if d["hash"] in self.entries]
        self.next_runs = {d["hash"]: d["next_run"] for d in mine}
        if len(mine) < len(self.entries):  # deleted by another process (mrq-scheduler 1.0, by hand)
            self.declared_at = None        # insert them again at the next check
        if names:
            self.supersede(docs, at)
        limit = to_mongo(at)
        return [d for d in mine if d.get("next_run") is not None and d["next_run"] <= limit]

    def supersede(self, docs: list[dict[str, Any]], at: dt.datetime) -> None:
        """Update :attr:`superseded` from ``docs`` (every definition of this process's names): of the
        definitions of a name that a live worker declares, the one first declared last wins."""
        live_since = to_mongo(at - dt.timedelta(seconds=LIVE_PERIODS * self.declare_every))
        newest: dict[str, dict[str, Any]] = {}
        for d in docs:
            if d.get("name") is None or not (d["hash"] in self.entries or (d.get("seen") or _NEVER) >= live_since):
                continue
            best = newest.get(d["name"])
            if best is None or (d.get("datecreated") or _NEVER, d["hash"]) > (best.get("datecreated") or _NEVER,
                                                                               best["hash"]):
                newest[d["name"]] = d
        superseded = {h: newest[e.name] for h, e in self.entries.items()
                      if e.name in newest and newest[e.name]["hash"] != h}
        for h in superseded.keys() - self.superseded.keys():
            entry, winner = self.entries[h], superseded[h]
            self.log.warning("scheduler: %r (%s %s) is not queued by this worker: a newer definition of that name "
                             "(%s %s, first declared %s UTC) is declared by a running worker; this one takes over "
                             "when no worker has declared that one for %g s", entry.name, entry.path,
                             entry.describe(), winner["path"], winner.get("description"),
                             winner["datecreated"].isoformat(), LIVE_PERIODS * self.declare_every)
        for h in self.superseded.keys() - superseded.keys():
            entry = self.entries[h]
            self.log.info("scheduler: %r (%s %s) is queued by this worker again: no newer definition of that name "
                          "is declared any more", entry.name, entry.path, entry.describe())
        self.superseded = superseded

    def queue_due(self, at: dt.datetime) -> list[ObjectId]:
        """Queue every due entry (each claim is a compare-and-set, so this is safe without the lock)."""
        ids = []
        for doc in self.due(at):
            if doc["hash"] in self.superseded:
                self.pass_period(doc, at)
                continue
            job_id = self.fire(doc, at)
            if job_id is not None:
                ids.append(job_id)
        return ids

    def pass_period(self, doc: dict[str, Any], at: dt.datetime) -> None:
        """Move the next run of a superseded definition forward without queueing: another definition of its
        name runs these periods, so if this one takes over again it resumes at its next regular time."""
        entry = self.entries[doc["hash"]]
        new = to_mongo(entry.next_run(at, previous=from_mongo(doc["next_run"])))
        passed = self.collection.update_one({"_id": doc["_id"], "next_run": doc["next_run"]},
                                            {"$set": {"next_run": new}})
        if passed.matched_count == 1:
            self.stats["periods_superseded"] += 1
            self.next_runs[entry.hash] = new

    def fire(self, doc: dict[str, Any], at: dt.datetime) -> ObjectId | None:
        """Queue the job of the due period of ``doc`` (as read), then claim the period; ``None`` if another
        process claimed it first (its job is the same one: nothing more was created) or queueing failed (the next
        check retries).

        Exactly once, whatever crashes: the job's id is derived from the entry's hash and the period
        (:func:`mrq.job.job_id_for`), and ``queue_job`` with a caller-given id creates nothing if it exists. So
        a process killed between the two steps leaves a queued job and an unclaimed period; the next check queues
        the same id again (a no-op) and claims the period.
        """
        from mrq.job import job_id_for, queue_job

        entry = self.entries[doc["hash"]]
        old = doc["next_run"]
        new = to_mongo(entry.next_run(at, previous=from_mongo(old)))
        job_id = job_id_for(f"mrq_scheduler:{entry.hash}:{old.isoformat()}")
        try:
            queue_job(entry.path, entry.params, queue=entry.queue, job_id=job_id)
        except Exception as exc:
            self.stats["errors"] += 1
            self.log.error("scheduler: could not queue %s (%s): %s: %s; retrying at the next check",
                           entry.path, entry.describe(), type(exc).__name__, exc)
            return None
        claim = self.collection.update_one(
            {"_id": doc["_id"], "next_run": old},
            {"$set": {"next_run": new, "last_run": old, "datelastqueued": to_mongo(at), "last_job": job_id},
             "$inc": {"queued_count": 1}})
        if claim.matched_count != 1:
            self.stats["claims_lost"] += 1
            return None
        self.queued[entry.hash] += 1
        self.next_runs[entry.hash] = new
        self.log.info("scheduler: queued %s %s (%s, period %s UTC), next run %s UTC", entry.path, job_id,
                      entry.describe(), old.isoformat(), new.isoformat())
        return job_id

    # ------------------------------------------------------------------ service
    def run_forever(self) -> None:
        """Check every ``interval`` seconds until :meth:`stop` (a worker service)."""
        import gevent

        self.ensure_index()
        while not self._stopping:
            self._busy = True
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - log and retry at the next check
                self.stats["errors"] += 1
                self.log.warning("scheduler: check failed: %s: %s", type(exc).__name__, exc)
            finally:
                self._busy = False
            gevent.sleep(self.interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop checking; wait (up to ``timeout``) for a check in progress, so it is not killed between a
        claim and its ``queue_job``."""
        import gevent

        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._busy and time.monotonic() < deadline:
            gevent.sleep(0.05)

    def report(self) -> dict[str, Any]:
        """``report["scheduler"]`` of the worker report."""
        return {
            "entries": len(self.entries),
            "queued": sum(self.queued.values()),
            "last_check": self.last_check,
            "checks": self.stats["checks"],
            "checks_skipped_locked": self.stats["lock_busy"],
            "claims_lost": self.stats["claims_lost"],
            "errors": self.stats["errors"],
            "periods_superseded": self.stats["periods_superseded"],
            "tasks": [{"hash": e.hash, "name": e.name, "path": e.path, "queue": e.queue, "schedule": e.describe(),
                       "queued": self.queued[e.hash], "next_run": self.next_runs.get(e.hash),
                       "superseded_by": self.superseded[e.hash]["hash"] if e.hash in self.superseded else None}
                      for e in self.entries.values()],
        }
