"""The worker's batching status writer: many jobs' status changes, one MongoDB round trip.

A job's "started" write and its final write usually meet in the same batch and
become one update. Each flush is one unordered ``bulk_write`` to ``mrq_jobs``,
then one Redis MULTI that acknowledges the jobs (drops their in-flight records,
schedules retries, requeues interrupted jobs, frees concurrency slots). If
MongoDB or Redis is down, the batch is kept and retried until it goes through:
a status write is never dropped, and a job is acknowledged in Redis only after
its status is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.lock
from bson import ObjectId
from pymongo import UpdateOne

from mrq import status as st
from mrq.broker import AckBatch, Broker
from mrq.job import Outcome

__all__ = ["StatusWriter"]

log = logging.getLogger("mrq.writer")


@dataclass
class _Pending:
    allowed: frozenset[str]
    set: dict[str, Any] = field(default_factory=dict)
    push: list[dict[str, Any]] = field(default_factory=list)
    insert: dict[str, Any] | None = None  # a raw job's first stored status: the document is created (upsert)
    final: bool = False                   # the job ended: written with the next flush, which it triggers
    created: float = field(default_factory=time.monotonic)


class StatusWriter:
    """Buffers status writes and flushes them every ``interval`` seconds (or at ``max_batch``)."""

    def __init__(self, collection: Any, broker: Broker, interval: float,
                 on_written: Callable[[list[tuple[ObjectId, str, dict[str, Any]]]], None] | None = None,
                 max_batch: int = 1000) -> None:
        self.collection = collection
        self.broker = broker
        self.interval = interval
        self.max_batch = max_batch
        self.on_written = on_written
        self._pending: dict[ObjectId, _Pending] = {}
        self._ack = AckBatch()       # Redis changes of the statuses in _pending
        self._unacked = AckBatch()   # Redis changes of statuses already stored
        self._unverified: list[tuple[ObjectId, str, dict[str, Any]]] = []  # stored, some refused: check which
        self._wakeup = gevent.event.Event()
        self._flushed = gevent.event.Event()  # set after each flush: wakes wait_for_room()
        self._lock = gevent.lock.RLock()  # one flush at a time; never kill the loop mid-write
        self._in_progress = 0
        self._closed = False
        self.written = 0
        self.refused = 0
        self.errors = 0

    def __len__(self) -> int:
        """Changes not yet stored (pending, or being written right now)."""
        return len(self._pending) + bool(self._ack) + bool(self._unacked) + self._in_progress

    def started(self, job_id: ObjectId, fields: dict[str, Any], insert: dict[str, Any] | None = None) -> None:
        """Record that a job started (written with the next flush, merged with its end if it is quick).

        :param insert: the fields of a raw job's document, created by this write if it does not exist yet.
        """
        pending = self._pending.setdefault(job_id, _Pending(st.allowed_from(st.STARTED)))
        pending.set.update(fields)
        if insert is not None:
            pending.insert = insert

    def finished(self, job_id: ObjectId, outcome: Outcome, insert: dict[str, Any] | None = None,
                 store: bool = True) -> None:
        """Record a job's end; it is acknowledged in Redis once the write is stored.

        :param insert: the fields of a raw job's document, created by this write if it does not exist yet.
        :param store: ``False`` for a raw job whose status is not stored (``statuses_no_storage``): only the Redis
            side is applied, with the next flush.
        """
        if store:
            pending = self._pending.setdefault(job_id, _Pending(st.allowed_from(outcome.status)))
            pending.final = True
            pending.set.update(outcome.set)
            if outcome.push_history:
                pending.push.append(outcome.push_history)
            if insert is not None:
                pending.insert = insert
        sid = str(job_id)
        self._ack.done.append(sid)
        if outcome.delayed:
            self._ack.delayed.append((outcome.delayed[0], sid, outcome.delayed[1]))
        if outcome.requeue:
            self._ack.requeue.append((outcome.requeue, sid))
        if outcome.release:
            self._ack.release.append((outcome.release, sid))
        if outcome.raw_push:
            self._ack.raw.append(outcome.raw_push)
        # A job's end is written at once (the loop wakes up; what ends meanwhile joins the next write): a worker
        # killed before its ends are stored runs those jobs again elsewhere, so the window is kept short.
        self._wakeup.set()

    def tracked_ids(self) -> set[str]:
        """Ids whose status or acknowledgement is not yet stored (they are still in flight in Redis)."""
        with self._lock:  # not while a batch is out being written
            return ({str(i) for i in self._pending} | set(self._ack.done) | set(self._unacked.done))

    def acknowledge(self, job_id: str, push_back_to: str | None = None) -> None:
        """Drop an in-flight record with no status write: a job that must not run (already ended), or that
        this worker may not run (``push_back_to``: back at the end of that queue, through its delayed set)."""
        self._ack.done.append(job_id)
        if push_back_to:
            self._ack.delayed.append((push_back_to, job_id, 0.0))

    def run(self) -> None:
        """The flush loop (a greenlet of the worker); ends after :meth:`close`. It cannot die of a failed
        flush: every error is logged and counted, the batch kept, and the next flush retries it."""
        while not self._closed:
            self._wakeup.wait(self.interval)
            self._wakeup.clear()
            with self._lock:
                if self._closed:
                    break
                try:
                    self.flush_once()
                except Exception:  # a bug, not an outage (those are handled below): log it, keep going
                    self.errors += 1
                    log.exception("Status flush failed; the batch is kept and retried")
                    gevent.sleep(min(1.0, self.interval * 2))

    def close(self) -> None:
        """Stop the flush loop, once it is not writing (then :meth:`flush` what is left)."""
        with self._lock:
            self._closed = True
        self._wakeup.set()

    def flush_once(self, everything: bool = False) -> bool:
        """Write what is pending (job ends, and "started" statuses older than one interval; ``everything``: all);
        return False (keeping it) if a server did not answer."""
        with self._lock:
            self._in_progress = len(self._pending) + bool(self._ack)
            try:
                return self._flush_once(everything)
            finally:
                self._in_progress = 0
                self._flushed.set()
                self._flushed.clear()

    def wait_for_room(self, limit: int) -> None:
        """Block while more than ``limit`` statuses wait to be stored (backpressure on the dequeue: when
        MongoDB is slower than the jobs, the worker stops taking new ones instead of piling up statuses)."""
        while len(self._pending) + self._in_progress > limit:
            self._wakeup.set()
            self._flushed.wait(max(self.interval, 0.05))

    def _flush_once(self, everything: bool = False) -> bool:
        # Take the statuses and the acknowledgements that go with them together: a job
        # that ends while this batch is being written is acknowledged only with its own write.
        # A "started" status waits up to one interval, to be merged with the end of a quick job.
        cutoff = time.monotonic() - self.interval
        if everything or all(p.final or p.created <= cutoff for p in self._pending.values()):
            pending, self._pending = self._pending, {}
        else:
            pending = {i: p for i, p in self._pending.items() if p.final or p.created <= cutoff}
            self._pending = {i: p for i, p in self._pending.items() if i not in pending}
        ack, self._ack = self._ack, AckBatch()
        if pending:
            ops = []
            for job_id, p in pending.items():
                update: dict[str, Any] = {"$set": p.set}
                if p.push:
                    update["$push"] = {"traceback_history": {"$each": p.push}}
                if p.set.get("status") == st.STARTED:
                    update["$unset"] = {"datedue": ""}
                if p.insert is not None:  # a raw job's first stored status creates its document
                    update["$setOnInsert"] = {k: v for k, v in p.insert.items() if k not in p.set}
                    ops.append(UpdateOne({"_id": job_id}, update, upsert=True))
                else:
                    ops.append(UpdateOne({"_id": job_id, "status": {"$in": sorted(p.allowed)}}, update))
            try:
                result = self.collection.bulk_write(ops, ordered=False)
            except BaseException as exc:
                # Any way out of the write (a server error, flush(timeout)'s Timeout, a kill) keeps the batch:
                # a status is never dropped, and the jobs stay in flight until it is stored.
                self._restore(pending, ack)
                if not isinstance(exc, Exception):
                    raise
                self.errors += 1
                log.warning("Status write of %d jobs failed (%s: %s); retrying", len(ops), type(exc).__name__, exc)
                gevent.sleep(min(1.0, self.interval * 2))
                return False
            self.written += len(ops)
            written = [(i, p.set.get("status", ""), p.set) for i, p in pending.items()]
            if result.matched_count + result.upserted_count < len(ops):
                self._unverified.extend(written)  # some were refused: find out which before reporting
            else:
                self._report(written)
        self._unacked.extend(ack)
        if self._unverified:
            self._verify()
        if self._unacked:
            try:
                self.broker.ack(self._unacked)
            except Exception as exc:  # noqa: BLE001 - statuses are stored; only the Redis part is retried
                self.errors += 1
                log.warning("Acknowledging %d jobs in Redis failed (%s: %s); retrying",
                            len(self._unacked.done), type(exc).__name__, exc)
                gevent.sleep(min(1.0, self.interval * 2))
                return False
            self._unacked = AckBatch()
        return True

    def _restore(self, pending: dict[ObjectId, _Pending], ack: AckBatch) -> None:
        """Put a batch that was not stored back in front of what came in meanwhile (newer changes win)."""
        for job_id, p in pending.items():
            newer = self._pending.get(job_id)
            if newer is not None:
                p.set.update(newer.set)
                p.push.extend(newer.push)
                p.insert = p.insert or newer.insert
            self._pending[job_id] = p
        ack.extend(self._ack)
        self._ack = ack

    def _verify(self) -> None:
        """Some updates of stored batches matched no document (the job was cancelled meanwhile): report only
        the others. The statuses are stored and acknowledged whatever happens here; if MongoDB fails to answer,
        the check (and the report to ``on_written``) is retried with the next flush."""
        ids = [w[0] for w in self._unverified]
        try:
            statuses = {d["_id"]: d.get("status") for d in self.collection.find({"_id": {"$in": ids}}, {"status": 1})}
        except Exception as exc:  # noqa: BLE001
            self.errors += 1
            log.warning("Checking %d refused status writes failed (%s: %s); retrying with the next flush",
                        len(ids), type(exc).__name__, exc)
            return
        written, self._unverified = self._unverified, []
        kept = [w for w in written if statuses.get(w[0]) == w[1]]
        self.refused += len(written) - len(kept)
        self._report(kept)

    def _report(self, written: list[tuple[ObjectId, str, dict[str, Any]]]) -> None:
        if self.on_written and written:
            try:
                self.on_written(written)
            except Exception:  # a callback must never keep the jobs from being acknowledged
                log.exception("Status-written callback failed")

    def flush(self, timeout: float = 30.0) -> bool:
        """Flush until nothing is pending or ``timeout`` passes; True if everything was written."""
        with gevent.Timeout(timeout, False):
            while len(self):
                self.flush_once(everything=True)
        return not len(self)
