"""Bulk actions on every job matching a filter (the original MRQ's ``JobAction``), and the filter itself.

::

    from mrq.actions import cancel_jobs, requeue_jobs, count_matching

    count_matching({"queue": "crawl/", "status": ["queued", "started"]}, "cancel")   # how many it would touch
    cancel_jobs({"queue": "crawl/", "status": ["queued", "started"]})     # {"matched": .., "cancelled": .., ...}
    requeue_jobs({"status": "failed", "exceptiontype": "ConnectionError"}, queue="retries")

A filter is a dict of:

* ``id``, ``worker``: job or worker ids (``ObjectId`` or their 24-hex-digit text);
* ``queue`` (a value ending in ``/`` matches every queue with that prefix), ``status``, ``path``,
  ``exceptiontype``: text; a value ending in ``*`` matches every value with that prefix (``tasks.io.*``);
* ``params``: a dict, or its JSON text: equality on each ``params.<key>`` (nested keys with dots);
* ``after``, ``before``: ISO dates (or datetimes, naive = UTC) bounding ``dateupdated``.

Each key takes a value or a list of values (any of them). Untrusted input is safe to pass: anything that
would read as a MongoDB operator (a key or a text value starting with ``$``, a dict or list where a
scalar is expected) is refused with a ``ValueError`` naming it, and prefixes are matched by an escaped,
anchored regular expression (no user regex reaches the server).

Work is done per 250 jobs: one ``update_many`` and one ``find`` in MongoDB, and a few Redis calls, for each
batch.
"""

from __future__ import annotations

import datetime
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bson import ObjectId

from mrq import status as st
from mrq.broker import InFlight, check_job_queue
from mrq.job import JOBS, utcnow
from mrq.runtime import connections, get_broker, get_current_config, get_current_job, get_plugin_manager
from mrq.task import task_settings

__all__ = ["build_query", "cancel_jobs", "requeue_jobs", "count_matching", "FILTER_KEYS", "action_statuses"]

FILTER_KEYS = ("id", "queue", "status", "worker", "path", "exceptiontype", "params", "after", "before")
#: Jobs per batch (one update_many, one find and a few Redis calls each). Not more: some servers check an
#: ``_id $in`` list against each document (SecantusDB: a batch of 1000 costs 7 times 5 batches of 200).
_BATCH = 250
_MAX_VALUES = 1000  # values per key: a filter is not a way to send a huge $in
_MAX_TEXT = 1000    # characters per text value
#: Statuses whose id may still be in a queue list (so a requeue checks the list before pushing).
_MAYBE_LISTED = frozenset({st.QUEUED, st.INTERRUPT, st.CANCEL, st.RETRY, st.STARTED})
_SCALARS = (str, int, float, bool, type(None))


def _values(key: str, value: Any) -> list[Any]:
    values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if len(values) > _MAX_VALUES:
        raise ValueError(f"Job filter {key!r} has {len(values)} values; give at most {_MAX_VALUES}.")
    return values


def _text(key: str, value: Any) -> str:
    """A text filter value, refusing what MongoDB could read as an operator."""
    if isinstance(value, ObjectId) and key in ("id", "worker"):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"Job filter {key!r}: {value!r} is a {type(value).__name__}; give text "
                         "(or a list of texts).")
    if value.startswith("$"):
        raise ValueError(f"Job filter {key!r}: {value!r} starts with '$', which MongoDB reads as an operator "
                         "or a field path; such values are refused.")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"Job filter {key!r}: value of {len(value)} characters; give at most {_MAX_TEXT}.")
    return value


def _object_id(key: str, value: Any) -> ObjectId:
    text = _text(key, value)
    if not ObjectId.is_valid(text):
        raise ValueError(f"Job filter {key!r}: {text!r} is not an id (24 hexadecimal digits).")
    return ObjectId(text)


def _date(key: str, value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        parsed = value
    else:
        text = _text(key, value)
        try:
            parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"Job filter {key!r}: {text!r} is not an ISO date like 2026-01-31T12:00:00.") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(datetime.UTC).replace(tzinfo=None)
    return parsed


def _params(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Job filter 'params' is not valid JSON ({exc}); give an object like "
                             '{"user": 42}.') from None
    if not isinstance(value, Mapping):
        raise ValueError(f"Job filter 'params' must be an object of param name -> value, not "
                         f"{type(value).__name__}.")
    out: dict[str, Any] = {}
    for name, v in value.items():
        if not isinstance(name, str) or not name or any(p.startswith("$") or not p for p in name.split(".")):
            raise ValueError(f"Job filter 'params': key {name!r} is refused (empty, or a part starts with '$', "
                             "which MongoDB reads as an operator).")
        if not isinstance(v, _SCALARS):
            raise ValueError(f"Job filter 'params': the value of {name!r} is a {type(v).__name__}; give a "
                             "text, number, boolean or null (objects would read as MongoDB operators).")
        if isinstance(v, str) and v.startswith("$"):
            raise ValueError(f"Job filter 'params': the value of {name!r} starts with '$', which MongoDB reads "
                             "as an operator or a field path; such values are refused.")
        out[f"params.{name}"] = v
    return out


def _match(field: str, key: str, values: list[Any]) -> dict[str, Any]:
    """Equality on each exact value, anchored escaped prefix for those ending in '/' (queue) or '*'."""
    exact: list[str] = []
    conds: list[dict[str, Any]] = []
    for raw in values:
        v = _text(key, raw)
        if v.endswith("*"):
            conds.append({field: {"$regex": "^" + re.escape(v[:-1])}})
        elif key == "queue" and v.endswith("/"):
            conds.append({field: {"$regex": "^" + re.escape(v)}})
        else:
            exact.append(v)
    if exact:
        conds.append({field: exact[0] if len(exact) == 1 else {"$in": exact}})
    return conds[0] if len(conds) == 1 else {"$or": conds}


def build_query(filters: Mapping[str, Any]) -> dict[str, Any]:
    """The MongoDB query of a filter dict (see the module docstring).

    :raises ValueError: on an unknown key or a refused value, with a message naming it.
    """
    if not isinstance(filters, Mapping):
        raise ValueError(f"A job filter is an object of {', '.join(FILTER_KEYS)}; not {type(filters).__name__}.")
    unknown = sorted(str(k) for k in set(filters) - set(FILTER_KEYS))
    if unknown:
        raise ValueError(f"Unknown job filter key(s) {unknown}; use {', '.join(FILTER_KEYS)}.")
    parts: list[dict[str, Any]] = []
    for key in FILTER_KEYS:
        value = filters.get(key)
        if value is None or value == "" or value == []:
            continue
        if key == "params":
            parts.append(_params(value))
            continue
        if key in ("after", "before"):
            parts.append({"dateupdated": {"$gte" if key == "after" else "$lt": _date(key, value)}})
            continue
        values = _values(key, value)
        if key in ("id", "worker"):
            oids = [_object_id(key, v) for v in values]
            field = "_id" if key == "id" else key
            parts.append({field: oids[0] if len(oids) == 1 else {"$in": oids}})
        elif key == "status":
            texts = [_text(key, v) for v in values]
            bad = [v for v in texts if v not in st.ALL_STATUSES]
            if bad:
                raise ValueError(f"Unknown status(es) {bad}; use {sorted(st.ALL_STATUSES)}.")
            parts.append({"status": texts[0] if len(texts) == 1 else {"$in": texts}})
        else:
            parts.append(_match(key, key, values))
    job = get_current_job()
    if job is not None and job.id is not None:
        # Run as a task: jobs queued after this one are untouched. Ids made by different processes in the same
        # second do not sort by time (their middle bytes are random per process), so the bound is the end of
        # the second of this job's id: every job queued before it is included.
        end = job.id.generation_time + datetime.timedelta(seconds=1)
        parts.append({"_id": {"$lt": ObjectId.from_datetime(end)}})
    return _combine(parts)


def _combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One dict when the parts' keys do not collide (simplest for query planners), else ``$and``. Operator
    conditions on one field merge (``after`` and ``before``: ``{"$gte": a, "$lt": b}``)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in merged:
                merged[key] = value
                continue
            current = merged[key]
            if (isinstance(current, dict) and isinstance(value, dict) and not key.startswith("$")
                    and all(str(k).startswith("$") for k in (*current, *value)) and not set(current) & set(value)):
                merged[key] = {**current, **value}
                continue
            return {"$and": parts}
    return merged


def _with_status(query: dict[str, Any], statuses: Iterable[str]) -> dict[str, Any]:
    """``query`` restricted to ``statuses``: its own status condition intersected (one field, which a planner
    serves with an index, rather than an ``$and`` of two conditions on it)."""
    allowed = sorted(statuses)
    own = query.get("status")
    if own is not None:
        given = own["$in"] if isinstance(own, dict) else [own]
        allowed = [s for s in allowed if s in given]
    return {**query, "status": allowed[0] if len(allowed) == 1 else {"$in": allowed}}


def action_statuses(filters: Mapping[str, Any], action: str) -> frozenset[str]:
    """The statuses a bulk ``action`` (``cancel`` or ``requeue``) touches for this filter."""
    if action == "cancel":
        return st.allowed_from(st.CANCEL)
    if action == "requeue":
        if filters.get("status"):
            return frozenset(_text("status", v) for v in _values("status", filters["status"]))
        return frozenset(st.ALL_STATUSES - {st.QUEUED})
    raise ValueError(f"Unknown bulk action {action!r}; use 'cancel' or 'requeue'.")


def count_matching(filters: Mapping[str, Any], action: str, limit: int = 0) -> int:
    """How many jobs :func:`cancel_jobs` or :func:`requeue_jobs` would touch now (``limit`` > 0: stop there)."""
    query = _with_status(build_query(filters), action_statuses(filters, action))
    kwargs = {"limit": limit} if limit > 0 else {}
    return int(connections.mongodb_jobs[JOBS].count_documents(query, **kwargs))


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    cursor = jobs.find(_with_status(build_query(filters), allowed), projection=["path", "queue", "status"],
                       batch_size=_BATCH)
    for batch in _chunks(cursor, _BATCH):
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
        cancelled = set(oids)
        forget_queued(broker, [(str(d["_id"]), d.get("queue") or "") for d in batch
                               if d["_id"] in cancelled and d.get("status") in WAITING])
        changes = [(oid, st.CANCEL, {"status": st.CANCEL, "dateupdated": now}) for oid in oids]
        for oid, status, fields in changes:
            hook.mrq_job_status_changed(job_id=oid, status=status, fields=fields)
        if changes:
            hook.mrq_jobs_status_changed(changes=changes)
    return counts


#: Statuses of a job whose id waits in a queue's list or delayed set.
WAITING = frozenset({st.QUEUED, st.RETRY, st.INTERRUPT})
#: A queue's list longer than this keeps the ids of its cancelled jobs (the workers skip them): taking them out
#: is one pass over the list, which blocks Redis meanwhile.
FORGET_MAX = 200_000
_FORGET = """
local ids = {}
for _, i in ipairs(ARGV) do ids[i] = true end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local kept, removed = {}, 0
for _, item in ipairs(items) do
  if ids[item] then removed = removed + 1 else kept[#kept + 1] = item end
end
if removed > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #kept, 5000 do
    redis.call('RPUSH', KEYS[1], unpack(kept, i, math.min(i + 4999, #kept)))
  end
end
return removed
"""


def forget_queued(broker: Any, jobs: Iterable[tuple[str, str]]) -> int:
    """Take the ids of cancelled jobs, ``(id, queue)``, out of their queues' lists and delayed sets, so that the
    queue sizes (dashboard, metrics) count only jobs that will run. Best effort: an id left behind (Redis down, a
    list longer than :data:`FORGET_MAX`) is skipped by the worker that pops it. Returns how many were taken out."""
    from mrq.broker import queue_kind

    by_queue: dict[str, list[str]] = defaultdict(list)
    for job_id, queue in jobs:
        if queue and queue_kind(queue) == "r":
            by_queue[queue].append(job_id)
    removed = 0
    for queue, ids in by_queue.items():
        try:
            removed += int(broker.redis.zrem(broker.delayed_key(queue), *ids))
            if broker.redis.llen(broker.queue_key(queue)) <= FORGET_MAX:
                removed += int(broker.redis.eval(_FORGET, 1, broker.queue_key(queue), *ids))
        except Exception:  # noqa: BLE001 - the workers skip them anyway
            continue
    return removed


def requeue_jobs(filters: Mapping[str, Any], queue: str | None = None, reset_retries: bool = True) -> dict[str, int]:
    """Queue every matching job again (without a ``status`` filter: every job not already queued).

    :param queue: move them to this queue (default: each job's own queue).
    :raises InvalidParams: if ``queue`` cannot name a regular queue (nothing is changed).
    :param reset_retries: set ``retry_count`` back to 0 (the original's ``requeue``; ``False`` is its
        ``requeue_retry``).

    Each id is pushed to Redis exactly once: an id still in its queue list, delayed set or in flight is not
    pushed again, and an id in flight on a dead worker is moved back atomically. Jobs running on a live
    worker are refused (cancel them first) and counted in ``running``. Returns
    ``{"matched", "requeued", "running"}``.
    """
    if queue is not None:
        check_job_queue(queue)
    broker, hook = get_broker(), get_plugin_manager().hook
    jobs = connections.mongodb_jobs[JOBS]
    statuses = action_statuses(filters, "requeue")
    counts = {"matched": 0, "requeued": 0, "running": 0}
    cursor = jobs.find(_with_status(build_query(filters), statuses), projection=["queue", "status"],
                       batch_size=_BATCH)
    for batch in _chunks(cursor, _BATCH):
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
        changes = [(d["_id"], st.QUEUED, dict(fields, queue=queue or d.get("queue"))) for d in todo]
        for oid, status, changed_fields in changes:
            hook.mrq_job_status_changed(job_id=oid, status=status, fields=changed_fields)
        if changes:
            hook.mrq_jobs_status_changed(changes=changes)
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
            broker.push_unique(new, entries, "tail")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
