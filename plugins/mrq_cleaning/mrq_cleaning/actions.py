"""Bulk actions on every job matching a filter, as the original MRQ's ``JobAction`` (used by the dashboard).

::

    from mrq_cleaning.actions import cancel_jobs, requeue_jobs

    cancel_jobs({"queue": "crawl/", "status": ["queued", "started"]})     # {"matched": .., "cancelled": .., ...}
    requeue_jobs({"status": "failed", "exceptiontype": "ConnectionError"}, queue="retries")

A filter is a dict of ``id``, ``queue`` (a value ending in ``/`` matches every queue with that prefix),
``status``, ``worker``, ``path``, ``exceptiontype`` (each a value or a list of values) and ``params`` (a dict,
or its JSON text: equality on each ``params.<key>``). Work is done per 1000 jobs: one ``update_many`` and one
``find`` in MongoDB, and a few Redis calls, for each batch.
"""

from __future__ import annotations

import datetime
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from bson import ObjectId
from mrq import status as st
from mrq.broker import InFlight
from mrq.context import connections, get_broker, get_current_config, get_current_job, get_plugin_manager
from mrq.job import JOBS, utcnow
from mrq.task import task_settings

from mrq_cleaning.core import chunks, push_if_absent

__all__ = ["build_query", "cancel_jobs", "requeue_jobs", "FILTER_KEYS"]

FILTER_KEYS = ("id", "queue", "status", "worker", "path", "exceptiontype", "params")
_BATCH = 1000
#: Statuses whose id may still be in a queue list (so a requeue checks the list before pushing).
_MAYBE_LISTED = frozenset({st.QUEUED, st.INTERRUPT, st.CANCEL, st.RETRY, st.STARTED})


def _values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _ids(values: Iterable[Any]) -> list[Any]:
    return [ObjectId(v) if isinstance(v, str) and ObjectId.is_valid(v) else v for v in values]


def build_query(filters: Mapping[str, Any]) -> dict[str, Any]:
    """The MongoDB query of a filter dict (see the module docstring); raises ``ValueError`` on unknown keys."""
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise ValueError(f"Unknown job filter key(s) {unknown}; use {', '.join(FILTER_KEYS)}.")
    query: dict[str, Any] = {}
    for key in FILTER_KEYS:
        value = filters.get(key)
        if value is None or value == "" or value == []:
            continue
        if key == "params":
            params = json.loads(value) if isinstance(value, str) else dict(value)
            for name, v in params.items():
                query[f"params.{name}"] = v
            continue
        values = _values(value)
        if key in ("id", "worker"):
            values = _ids(values)
        if key == "status":
            bad = [v for v in values if v not in st.ALL_STATUSES]
            if bad:
                raise ValueError(f"Unknown status(es) {bad}; use {sorted(st.ALL_STATUSES)}.")
        if key == "queue":
            exact = [v for v in values if not str(v).endswith("/")]
            conds: list[dict[str, Any]] = [{"queue": {"$regex": "^" + re.escape(str(v))}}
                                           for v in values if str(v).endswith("/")]
            if exact:
                conds.append({"queue": exact[0] if len(exact) == 1 else {"$in": exact}})
            if len(conds) == 1:
                query.update(conds[0])
            else:
                query["$or"] = conds
            continue
        field = "_id" if key == "id" else key
        query[field] = values[0] if len(values) == 1 else {"$in": values}
    job = get_current_job()
    if job is not None and job.id is not None:  # run as a task: jobs queued after this one are untouched
        query = {"$and": [query, {"_id": {"$lte": job.id}}]} if query else {"_id": {"$lte": job.id}}
    return query


def _with_status(query: dict[str, Any], statuses: Iterable[str]) -> dict[str, Any]:
    cond = {"status": {"$in": sorted(statuses)}}
    return {"$and": [query, cond]} if query else cond


def cancel_jobs(filters: Mapping[str, Any]) -> dict[str, int]:
    """Cancel every matching job that is not finished (queued, started, retry, interrupt).

    Queued ones never run (workers skip them); running ones are stopped by their worker within about a
    second (the ``Job.cancel`` semantics: status ``cancel`` written with the transition guard, then a kill
    request through Redis). Returns ``{"matched", "cancelled", "stopped"}``: ``stopped`` = cancelled jobs
    that were in flight on a worker.
    """
    config, broker, hook = get_current_config(), get_broker(), get_plugin_manager().hook
    jobs = connections.mongodb_jobs[JOBS]
    allowed = st.allowed_from(st.CANCEL)
    ttls: dict[str, float] = {}
    counts = {"matched": 0, "cancelled": 0, "stopped": 0}
    cursor = jobs.find(_with_status(build_query(filters), allowed), projection=["path"], batch_size=_BATCH)
    for batch in chunks(cursor, _BATCH):
        counts["matched"] += len(batch)
        now = utcnow()
        by_ttl: dict[float, list[ObjectId]] = defaultdict(list)
        for d in batch:
            path = d.get("path", "")
            if path not in ttls:
                ttls[path] = task_settings(path, config, load=False).cancel_ttl
            by_ttl[ttls[path]].append(d["_id"])
        modified = 0
        for ttl, oids in by_ttl.items():
            res = jobs.update_many({"_id": {"$in": oids}, "status": {"$in": sorted(allowed)}},
                                   {"$set": {"status": st.CANCEL, "dateupdated": now,
                                             "dateexpires": now + datetime.timedelta(seconds=ttl)}})
            modified += res.modified_count
        oids = [d["_id"] for d in batch]
        if modified < len(oids):  # some ended meanwhile: find exactly which ones this call cancelled
            oids = [d["_id"] for d in jobs.find({"_id": {"$in": oids}, "status": st.CANCEL, "dateupdated": now},
                                                projection=["_id"])]
        counts["cancelled"] += len(oids)
        counts["stopped"] += len(broker.request_kill([str(i) for i in oids]))
        for oid in oids:
            hook.mrq_job_status_changed(job_id=oid, status=st.CANCEL, fields={"status": st.CANCEL,
                                                                             "dateupdated": now})
    return counts


def requeue_jobs(filters: Mapping[str, Any], queue: str | None = None, reset_retries: bool = True) -> dict[str, int]:
    """Queue every matching job again (without a ``status`` filter: every job not already queued).

    :param queue: move them to this queue (default: each job's own queue).
    :param reset_retries: set ``retry_count`` back to 0 (the original's ``requeue``; ``False`` is its
        ``requeue_retry``).

    Each id is pushed to Redis exactly once: an id still in its queue list, delayed set or in flight is not
    pushed again, and an id in flight on a dead worker is moved back atomically. Jobs running on a live
    worker are refused (cancel them first) and counted in ``running``. Returns
    ``{"matched", "requeued", "running"}``.
    """
    broker, hook = get_broker(), get_plugin_manager().hook
    jobs = connections.mongodb_jobs[JOBS]
    query = build_query(filters)
    statuses = set(_values(filters["status"])) if filters.get("status") else set(st.ALL_STATUSES) - {st.QUEUED}
    counts = {"matched": 0, "requeued": 0, "running": 0}
    cursor = jobs.find(_with_status(query, statuses), projection=["queue", "status"], batch_size=_BATCH)
    for batch in chunks(cursor, _BATCH):
        counts["matched"] += len(batch)
        sids = [str(d["_id"]) for d in batch]
        recs = {sid: _s(rec).split(" ", 1)[0] for sid, rec in zip(sids, broker.redis.hmget(broker.inflight_key, sids),
                                                                  strict=True) if rec}
        alive = broker.alive(sorted(set(recs.values())))
        running = {sid for sid, w in recs.items() if alive[w]}
        counts["running"] += len(running)
        todo = [d for d in batch if str(d["_id"]) not in running]
        if not todo:
            continue
        now = utcnow()
        fields: dict[str, Any] = {"status": st.QUEUED, "datequeued": now, "dateupdated": now}
        if reset_retries:
            fields["retry_count"] = 0
        if queue:
            fields["queue"] = queue
        oids = [d["_id"] for d in todo]
        jobs.update_many({"_id": {"$in": oids}, "status": {"$in": sorted(statuses)}},
                         {"$set": fields, "$unset": {"datedue": ""}})
        # Exactly the documents this call changed (a concurrent requeue of the same job changed it first).
        changed = {d["_id"] for d in jobs.find({"_id": {"$in": oids}, "status": st.QUEUED, "datequeued": now},
                                               projection=["_id"])}
        todo = [d for d in todo if d["_id"] in changed]
        _push_requeued(broker, todo, queue, recs)
        counts["requeued"] += len(todo)
        for d in todo:
            hook.mrq_job_status_changed(job_id=d["_id"], status=st.QUEUED,
                                        fields=dict(fields, queue=queue or d.get("queue")))
    return counts


def _push_requeued(broker: Any, docs: list[dict[str, Any]], queue: str | None, recs: dict[str, str]) -> None:
    by_queue: dict[str, list[dict[str, Any]]] = defaultdict(list)
    moved: dict[str, list[str]] = defaultdict(list)
    for d in docs:
        old = d.get("queue") or "default"
        new = queue or old
        by_queue[new].append(d)
        if new != old and d.get("status") in _MAYBE_LISTED and str(d["_id"]) not in recs:
            moved[old].append(str(d["_id"]))
    for old, ids in moved.items():  # an id left in its old queue would run twice: take it out (O(list))
        broker.remove(old, ids)
    for new, group in by_queue.items():
        dead = [InFlight(str(d["_id"]), recs[str(d["_id"])], 0, new) for d in group if str(d["_id"]) in recs]
        for worker in {r.worker_id for r in dead}:
            broker.requeue_inflight([r for r in dead if r.worker_id == worker], worker)
        entries = [(str(d["_id"]), 0.0, d.get("status") in _MAYBE_LISTED) for d in group
                   if str(d["_id"]) not in recs]
        if entries:
            push_if_absent(broker, new, entries, "tail")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
