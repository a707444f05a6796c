"""Putting back the jobs of workers that died, and containing the jobs that kill them.

A job in flight on a dead worker (SIGKILL, OOM, segfault, a lost machine) runs again elsewhere: at least once.
Not a job that had *ended* before its worker died, though: a worker records each job's end in Redis as soon as
it happens (``{prefix}:done``, a Redis write batched with the other ends of the moment), then stores statuses in
MongoDB in batches; the recovery stores the recorded ends of a dead worker instead of running those jobs again.
A job that *is* the cause (a segfault in a C extension, ``os.abort()``, a memory blow-up) would kill worker after
worker, forever; so each death is counted on the job's document (``worker_deaths``, and an entry in its
``traceback_history`` naming the worker and the time), and at ``--max_worker_deaths`` (default 3) the job ends
with the final status ``maxworkerdeaths`` instead of running again. ``mrq-run`` or ``Job.requeue()`` revive it.

A death is counted only against a job that ran *alone* on the dead worker: beside other jobs, none is known to be
the cause, so none is counted; each becomes a *suspect* (``suspect: true`` on its document, and a
``traceback_history`` entry), and the next worker that dequeues a suspect runs it alone (the other jobs of its
batch go back to their queue, the running ones end first). A poison job thus dies alone and is counted; an innocent
job that died beside it runs alone once, succeeds, and is no longer a suspect.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import bson
from bson import ObjectId

from mrq import status as st
from mrq.broker import InFlight

__all__ = ["requeue_inflight", "requeue_dead_worker_jobs", "store_marked_ends", "death_entry", "WORKER_DIED"]

#: ``exceptiontype`` of a ``traceback_history`` entry recording a worker death.
WORKER_DIED = "WorkerDied"


def death_entry(worker_id: Any, why: str, now: datetime.datetime) -> dict[str, Any]:
    """The ``traceback_history`` entry of one worker death while the job ran."""
    return {"date": now, "status": "workerdied", "exceptiontype": WORKER_DIED, "worker": worker_id,
            "traceback": why}


def _docs(ids: Iterable[str], fields: list[str], query: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    from mrq.job import JOBS
    from mrq.runtime import connections

    oids = [ObjectId(i) for i in ids if ObjectId.is_valid(i)]
    if not oids:
        return {}
    return {str(d["_id"]): d for d in connections.mongodb_jobs[JOBS].find({"_id": {"$in": oids}, **(query or {})},
                                                                          fields)}


def requeue_inflight(records: Iterable[InFlight], worker_id: str = "") -> list[str]:
    """Requeue in-flight jobs (that a worker popped and did not run): regular ids at the head of their queue; raw
    jobs back into their raw queue, or, if a status of theirs was stored, as regular jobs on their
    ``retry_queue`` (their payload would otherwise run again under a new id, next to the stored one). Only jobs
    still in flight (on ``worker_id``) are requeued; returns their ids.

    Costs one ``find`` in MongoDB when there are raw jobs among ``records``, and one Lua call in Redis.
    """
    from mrq.runtime import get_broker

    records = list(records)
    raw = [r.job_id for r in records if r.payload is not None]
    as_regular = {i: d.get("queue") or "default" for i, d in _docs(raw, ["queue"]).items()} if raw else {}
    return get_broker().requeue_inflight(records, worker_id, as_regular)


def requeue_dead_worker_jobs(records: Iterable[InFlight], worker_id: str, max_deaths: int | None = None,
                             in_flight: int | None = None) -> dict[str, list[str]]:
    """Requeue the jobs in flight on the dead worker ``worker_id`` (its heartbeat is gone: the caller checked). If
    one job was in flight, the death is counted on its document, and at ``max_deaths`` (default
    ``--max_worker_deaths``) it ends as ``maxworkerdeaths`` instead; if several were, none is counted and each
    becomes a suspect, to run alone next time (see the module's docstring).

    :param in_flight: how many jobs the worker had in flight in all, when ``records`` is a part of them (default:
        ``len(records)``).

    Documents of requeued jobs go back to ``queued`` (if they still said ``queued``, ``retry``, ``interrupt``, or
    ``started`` on this worker). Raw jobs that stored nothing have no document: their payload goes back into their
    raw queue, uncounted. Returns ``{"requeued": [...], "poisoned": [...]}``.

    MongoDB is updated before Redis gives the jobs back (a worker may pop them the next instant), and a death
    already recorded by an interrupted earlier call is not recorded twice. Costs two ``find`` and up to three
    ``update_many`` in MongoDB, one Lua call in Redis.
    """
    from mrq.job import JOBS, utcnow
    from mrq.runtime import connections, get_broker, get_current_config

    records = list(records)
    if not records:
        return {"requeued": [], "poisoned": [], "recovered": []}
    if max_deaths is None:
        max_deaths = int(get_current_config().get("max_worker_deaths") or 0)
    recovered = store_marked_ends(records, worker_id)
    running = (len(records) if in_flight is None else in_flight) - len(recovered)
    records = [r for r in records if r.job_id not in recovered]
    alone = running <= 1 and len(records) == 1
    now = utcnow()
    oid = ObjectId(worker_id) if ObjectId.is_valid(worker_id) else worker_id
    # A death already recorded (an earlier pass stopped between its MongoDB update and its Redis requeue) is not
    # recorded again: the update skips the documents that have it, and it counts in worker_deaths already.
    this_death = {"traceback_history": {"$elemMatch": {"status": "workerdied", "worker": oid}}}
    docs = _docs([r.job_id for r in records], ["queue", "worker_deaths"])
    seen = set(_docs(list(docs), ["_id"], this_death)) if docs else set()
    poison = {i for i, d in docs.items()
              if alone and max_deaths and int(d.get("worker_deaths") or 0) + (i not in seen) >= max_deaths}
    as_regular = {r.job_id: docs[r.job_id].get("queue") or "default" for r in records
                  if r.payload is not None and r.job_id in docs}
    if alone:
        entry = death_entry(oid, f"The worker {worker_id} running this job alone died (heartbeat gone).", now)
    else:
        entry = death_entry(oid, f"The worker {worker_id} died (heartbeat gone) while this job ran beside "
                                 f"{running - 1} other(s): not counted against it; it runs alone next time.", now)
    # MongoDB first: a job popped again the moment Redis has it back must already be a suspect (else a worker
    # runs it beside others again) and its death recorded (else the worker it kills next hides this one).
    jobs = connections.mongodb_jobs[JOBS]
    counted = [ObjectId(i) for i in docs if i not in poison]
    if counted:
        jobs.update_many(
            {"_id": {"$in": counted}, "traceback_history": {"$not": this_death["traceback_history"]},
             "$or": [{"status": {"$in": [st.QUEUED, st.RETRY, st.INTERRUPT]}},
                     {"status": st.STARTED, "worker": {"$in": [oid, None]}}]},
            {"$set": {"status": st.QUEUED, "dateupdated": now, "suspect": True},
             "$inc": {"worker_deaths": 1 if alone else 0}, "$push": {"traceback_history": entry}})
    if poison:
        _poison(jobs, [ObjectId(i) for i in poison], entry, max_deaths, now, this_death["traceback_history"])
    done = set(get_broker().requeue_inflight(records, worker_id, as_regular, drop=poison))
    requeued = [i for i in done if i not in poison]
    poisoned = [i for i in done if i in poison]
    return {"requeued": requeued, "poisoned": poisoned, "recovered": recovered}


def store_marked_ends(records: Iterable[InFlight], worker_id: str) -> list[str]:
    """Jobs of the dead worker ``worker_id`` that had ended, their end recorded in Redis but their status not yet
    stored: store it now, and apply its Redis side (retry delay, requeue of an interrupt, semaphore), instead of
    running them again. Returns their ids.

    Idempotent: a status already stored is not written twice (the update filters on the statuses it may
    replace), and the Redis side is applied only to ids still in flight on that worker.
    """
    from pymongo import UpdateOne

    from mrq.broker import AckBatch
    from mrq.job import JOBS
    from mrq.runtime import connections, get_broker

    broker = get_broker()
    records = [r for r in records if r.worker_id == worker_id]
    marks = broker.done_marks([r.job_id for r in records])
    if not marks:
        return []
    ops, batch = [], AckBatch()
    for job_id, raw in marks.items():
        end = bson.decode(raw)
        if end.get("set"):
            update: dict[str, Any] = {"$set": end["set"]}
            if end.get("push"):
                update["$push"] = {"traceback_history": {"$each": end["push"]}}
            if end.get("insert"):
                update["$setOnInsert"] = {k: v for k, v in end["insert"].items() if k not in end["set"]}
                ops.append(UpdateOne({"_id": ObjectId(job_id)}, update, upsert=True))
            else:
                ops.append(UpdateOne({"_id": ObjectId(job_id), "status": {"$in": end["allowed"]}}, update))
        batch.done.append(job_id)
        if end.get("delayed"):
            batch.delayed.append((end["delayed"][0], job_id, end["delayed"][1]))
        if end.get("requeue"):
            batch.requeue.append((end["requeue"], job_id))
        if end.get("release"):
            batch.release.append((end["release"], job_id))
        if end.get("raw"):
            batch.raw.append(tuple(end["raw"]))  # type: ignore[arg-type]
    if ops:
        connections.mongodb_jobs[JOBS].bulk_write(ops, ordered=False)
        ends = {ObjectId(i): bson.decode(raw).get("set") or {} for i, raw in marks.items()}
        _report_written({i: f for i, f in ends.items() if f.get("status")})
    broker.ack(batch)
    return list(marks)


def _report_written(ends: dict[ObjectId, dict[str, Any]]) -> None:
    """Call ``mrq_job_status_changed`` and ``mrq_jobs_status_changed`` for the statuses written by a recovery
    (those its guard did not refuse: the document now has them), as a worker's writer does: a plugin acting on
    job ends (the dependents of the workflows plugin) sees the ends stored here too."""
    import logging

    from mrq.job import JOBS
    from mrq.runtime import connections, get_plugin_manager

    if not ends:
        return
    try:
        stored = {d["_id"]: d.get("status") for d in connections.mongodb_jobs[JOBS].find(
            {"_id": {"$in": list(ends)}}, {"status": 1})}
        changes = [(i, f["status"], f) for i, f in ends.items() if stored.get(i) == f["status"]]
        if not changes:
            return
        hook = get_plugin_manager().hook
        for job_id, status, fields in changes:
            hook.mrq_job_status_changed(job_id=job_id, status=status, fields=fields)
        hook.mrq_jobs_status_changed(changes=changes)
    except Exception:  # noqa: BLE001 - the statuses are stored; a plugin's failure must not undo the recovery
        logging.getLogger("mrq.recovery").exception("Reporting %d recovered job ends to plugins failed", len(ends))


def _poison(jobs: Any, oids: list[ObjectId], entry: dict[str, Any], max_deaths: int, now: datetime.datetime,
            this_death: dict[str, Any]) -> None:
    import logging

    from mrq.runtime import get_current_config
    from mrq.task import task_settings

    ttl = float(get_current_config().get("default_job_ttl") or task_settings("", {}).default_ttl)
    why = (f"This job was running when its worker died {max_deaths} times (--max_worker_deaths): it is probably "
           "what kills them (a crash in native code, os._exit/abort, memory). It will not run again by itself: "
           "fix the cause, then requeue it. The deaths are in traceback_history.")
    jobs.update_many(
        {"_id": {"$in": oids}, "status": {"$in": sorted(st.allowed_from(st.MAXWORKERDEATHS))}},
        {"$set": {"status": st.MAXWORKERDEATHS, "dateupdated": now, "exceptiontype": WORKER_DIED, "traceback": why,
                  "dateexpires": now + datetime.timedelta(seconds=ttl)}})
    jobs.update_many({"_id": {"$in": oids}, "traceback_history": {"$not": this_death}},
                     {"$inc": {"worker_deaths": 1}, "$push": {"traceback_history": entry}})
    _report_written({i: {"status": st.MAXWORKERDEATHS, "dateupdated": now, "exceptiontype": WORKER_DIED}
                     for i in oids})
    logging.getLogger("mrq.recovery").error("%d job(s) killed their worker %d times: status %s, not requeued: %s",
                                            len(oids), max_deaths, st.MAXWORKERDEATHS, " ".join(map(str, oids)))
