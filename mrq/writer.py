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

import bson
import gevent
import gevent.event
import gevent.lock
from bson import ObjectId
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from mrq import status as st
from mrq.broker import AckBatch, Broker
from mrq.job import Outcome

__all__ = ["StatusWriter", "end_mark", "MAX_MARK_BYTES"]

#: Seconds a write triggered by a job's end waits for the ends of the same moment (at most this many seconds are
#: added to the window in which a SIGKILL would run finished jobs again; it keeps round trips per job low).
_COALESCE = 0.005

#: A job end larger than this (a big result or traceback) is not marked in Redis: if its worker dies before the
#: status is stored, the job runs again instead.
MAX_MARK_BYTES = 64 * 1024


def end_mark(pending: _Pending | None, outcome: Outcome) -> bytes | None:
    """The encoded end of a job (its status write and the Redis side of it), for :meth:`Broker.mark_done`."""
    doc: dict[str, Any] = {"delayed": list(outcome.delayed) if outcome.delayed else None, "requeue": outcome.requeue,
                           "release": outcome.release, "raw": list(outcome.raw_push) if outcome.raw_push else None}
    if pending is not None:
        doc.update(set=pending.set, push=pending.push, allowed=sorted(pending.allowed), insert=pending.insert)
    try:
        data = bson.encode(doc)
    except Exception:  # noqa: BLE001 - not encodable: no mark (the job would run again after a crash)
        return None
    return data if len(data) <= MAX_MARK_BYTES else None

log = logging.getLogger("mrq.writer")


@dataclass
class _Pending:
    allowed: frozenset[str]
    set: dict[str, Any] = field(default_factory=dict)
    push: list[dict[str, Any]] = field(default_factory=list)
    insert: dict[str, Any] | None = None  # a raw job's first stored status: the document is created (upsert)
    final: bool = False                   # the job ended: written with the next flush, which it triggers
    created: float = field(default_factory=time.monotonic)
    fallback: bool = False  # the short "failed" write that replaced a write MongoDB refused


def _small(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields whose BSON is at most 64 KiB (a refused write is stored again without the others)."""
    return {k: v for k, v in fields.items() if len(bson.encode({"v": v})) <= 64 * 1024}


class StatusWriter:
    """Buffers status writes and flushes them every ``interval`` seconds (or at ``max_batch``)."""

    def __init__(self, collection: Any, broker: Broker, interval: float,
                 on_written: Callable[[list[tuple[ObjectId, str, dict[str, Any]]]], None] | None = None,
                 max_batch: int = 1000, worker_id: str = "") -> None:
        self.collection = collection
        self.broker = broker
        self.worker_id = worker_id  # whose in-flight jobs these are: an end is marked only while in flight there
        self.interval = interval
        self.max_batch = max_batch
        self.on_written = on_written
        self._pending: dict[ObjectId, _Pending] = {}
        self._ack = AckBatch()       # Redis changes of the statuses in _pending
        self._unacked = AckBatch()   # Redis changes of statuses already stored
        self._unverified: list[tuple[ObjectId, str, dict[str, Any]]] = []  # stored, some refused: check which
        self._writing: set[str] = set()  # ids of the batch out being written (swapped out of _pending/_ack)
        self._marks: dict[str, bytes] = {}  # job ends to record in Redis at once (see run_marks)
        self._marks_wakeup = gevent.event.Event()
        self._wakeup = gevent.event.Event()
        self._flushed = gevent.event.Event()  # set after each flush: wakes wait_for_room()
        self._lock = gevent.lock.RLock()  # one flush at a time; never kill the loop mid-write
        self._in_progress = 0
        self._closed = False
        self.written = 0
        self.batches = 0  # bulk writes that stored statuses (MongoDB round trips of this writer)
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
        # Nothing stored and nothing to put back (a raw job that succeeded): no mark; its acknowledgement follows
        # within a few milliseconds anyway.
        has_side = bool(outcome.delayed or outcome.requeue or outcome.release or outcome.raw_push)
        mark = end_mark(self._pending.get(job_id) if store else None, outcome) if store or has_side else None
        if mark is not None:
            self._marks[sid] = mark
            self._marks_wakeup.set()
        if store or has_side:
            # A stored status is written at once (the loop wakes up; what ends meanwhile joins the next write), so
            # that little is left to recover from the marks if the worker dies. A raw job that stores nothing is
            # acknowledged with the next regular flush (--flush_interval), at a tiny fraction of a round trip.
            self._wakeup.set()
        elif len(self._ack.done) >= self.max_batch:
            self._wakeup.set()

    def tracked_ids(self) -> set[str]:
        """Ids whose status or acknowledgement is not yet stored (they are still in flight in Redis), the batch
        being written included. Takes no lock: the heartbeat may call it while MongoDB is slow."""
        return ({str(i) for i in self._pending} | set(self._ack.done) | set(self._unacked.done)
                | self._writing)

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
            if self._wakeup.wait(self.interval):
                gevent.sleep(_COALESCE)  # woken by a job's end: let the ends of the same moment join this write
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

    def run_marks(self) -> None:
        """Record job ends in Redis as soon as they happen (a greenlet of the worker, Redis only): a worker killed
        before their statuses are stored leaves them there, and the recovery of its jobs stores them instead of
        running the jobs again. One HSET per wake-up, for every end since the last one."""
        while True:
            self._marks_wakeup.wait()
            self._marks_wakeup.clear()
            marks, self._marks = self._marks, {}
            if not marks:
                continue
            try:
                self.broker.mark_done(marks, self.worker_id)
            except Exception as exc:  # noqa: BLE001 - Redis down: the marks wait (they are a safety net only)
                ending = set(self._ack.done) | set(self._unacked.done) | self._writing  # not acknowledged meanwhile
                self._marks = {i: m for i, m in marks.items() if i in ending} | self._marks
                log.warning("Recording %d job ends in Redis failed (%s: %s); retrying", len(marks),
                            type(exc).__name__, exc)
                gevent.sleep(min(1.0, self.interval * 2))
                self._marks_wakeup.set()

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
        self._writing = {str(i) for i in pending} | set(ack.done)
        try:
            return self._write(pending, ack)
        finally:
            self._writing = set()

    def _write(self, pending: dict[ObjectId, _Pending], ack: AckBatch) -> bool:
        if pending:
            ops = []
            for job_id, p in pending.items():
                update: dict[str, Any] = {"$set": p.set}
                if p.push:
                    update["$push"] = {"traceback_history": {"$each": p.push}}
                if p.set.get("status") == st.STARTED:
                    update["$unset"] = {"datedue": ""}
                elif p.set.get("status") == st.SUCCESS:  # an earlier attempt's error stays in traceback_history only
                    update["$unset"] = {"exceptiontype": "", "traceback": ""}
                if p.insert is not None:  # a raw job's first stored status creates its document
                    update["$setOnInsert"] = {k: v for k, v in p.insert.items() if k not in p.set}
                    ops.append(UpdateOne({"_id": job_id}, update, upsert=True))
                else:
                    ops.append(UpdateOne({"_id": job_id, "status": {"$in": sorted(p.allowed)}}, update))
            try:
                result = self.collection.bulk_write(ops, ordered=False)
            except BulkWriteError as exc:
                if not self._set_aside_refused(pending, exc):
                    self._restore(pending, ack)
                    self.errors += 1
                    log.warning("Status write of %d jobs failed (%.300s); retrying", len(ops), exc)
                    gevent.sleep(min(1.0, self.interval * 2))
                    return False
                self._restore({}, ack)  # acknowledged with the next flush, once the refused ones are stored
                return False
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
            self.batches += 1
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
            for job_id in self._unacked.done:  # an end not marked yet needs no mark now (the same id may be
                self._marks.pop(job_id, None)  # dequeued again by this worker: the mark would outlive its run)
            self._unacked = AckBatch()
        return True

    def _set_aside_refused(self, pending: dict[ObjectId, _Pending], exc: BulkWriteError) -> bool:
        """MongoDB refused some updates of a batch (a document past 16 MiB...) and stored the others. Each refused
        one is replaced by a short write of status ``failed`` that says why, for the next flush (one refused again
        is given up, logged): a job never blocks the batches of the others. False if the batch as a whole failed."""
        errors = exc.details.get("writeErrors") or []
        if exc.details.get("writeConcernErrors") or not errors:
            return False
        ids = list(pending)
        refused = {ids[e["index"]]: e for e in errors}
        stored = [(i, p.set.get("status", ""), p.set) for i, p in pending.items() if i not in refused]
        self.written += len(stored)
        self._unverified.extend(stored)
        for job_id, error in refused.items():
            self.errors += 1
            p, why = pending[job_id], f"{error.get('code')}: {str(error.get('errmsg'))[:300]}"
            if p.fallback:
                log.error("MongoDB refused the status write of job %s again (%s); its document is left as it is",
                          job_id, why)
                continue
            log.error("MongoDB refused the status write %r of job %s (%s); storing it as failed without its large "
                      "fields", p.set.get("status"), job_id, why)
            fields = _small(p.set) | {
                "status": st.FAILED, "exceptiontype": "StatusWriteRefused",
                "traceback": f"MRQ could not store this job's status {p.set.get('status')!r}: MongoDB refused the "
                             f"write ({why}). Fields larger than 64 KiB (result, traceback...) were left out: keep a "
                             "job's params, result and exception messages well under 16 MiB."}
            self._pending[job_id] = _Pending(st.allowed_from(st.FAILED) | p.allowed, fields,
                                             insert=_small(p.insert) if p.insert is not None else None, fallback=True,
                                             final=True)
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
