"""The jobs list: newest first, any filter of :func:`mrq.actions.build_query`, without scanning the collection.

A plain ``find(query).sort("_id", -1).skip(s).limit(n)`` reads every matching document on servers whose
planner cannot walk an index backwards and stop (SecantusDB: 1.4 to 6 s over 100,000 jobs; see
docs/performance.md). So the list is read by **time windows of ids**, newest first: the last hour, then
6 hours, a day, a week, a month, a year, then everything older, until ``skip + limit + 1`` jobs are found.
Inside a window, one equality of the filter (the *driver*: exception type, task path, worker, queue or
status, first found in that order; every status when the filter has none) is read through the
``(<driver>, _id)`` indexes that the dashboard creates (:mod:`mrq_dashboard.indexes`): an index range, whose
cost is the number of jobs of that window. A driver with several values (``status=failed,timeout``, a queue
prefix expanded to the known queues) is one range per value. When the filter has more than the driver, the
ids found are then checked against the whole query (``{"_id": {"$in": ids}, **query}``), so the result is
exactly MongoDB's answer to the filter.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bson import ObjectId
from mrq import status as st
from mrq.actions import build_query

__all__ = ["list_jobs", "expand_prefixes", "expand_queue_prefixes", "DRIVERS", "WINDOWS", "INDEXED_WINDOWS"]

#: Filter keys that can drive the read, most selective first.
DRIVERS = ("exceptiontype", "path", "worker", "queue", "status")
#: Widths of the successive id windows, in seconds (``None``: everything older).
WINDOWS: tuple[float | None, ...] = (3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400, None)
#: Without an indexed equality in the filter (only params or dates), this many windows are read by status;
#: older jobs are then read by one plain query (the server scans: a filter on params alone cannot use an index).
INDEXED_WINDOWS = 2
_MAX_DRIVER_VALUES = 50
_CHUNK = 1000


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


def expand_prefixes(filters: Mapping[str, Any], key: str, known: Iterable[str]) -> dict[str, Any]:
    """Values of ``key`` that are prefixes (``x*``; for ``queue`` also ``q/``) replaced by the ``known`` values
    they match, so that they are read by index as exact values. A prefix that matches nothing known is kept."""
    out = dict(filters)
    if not filters.get(key):
        return out
    known = sorted(known)
    values: list[Any] = []
    for value in _as_list(filters[key]):
        prefix = None
        if isinstance(value, str) and value.endswith("*"):
            prefix = value[:-1]
        elif isinstance(value, str) and key == "queue" and value.endswith("/"):
            prefix = value
        matched = [k for k in known if k.startswith(prefix)] if prefix is not None else []
        values.extend(matched or [value])
    out[key] = sorted(set(values), key=values.index)
    return out


def expand_queue_prefixes(filters: Mapping[str, Any], known_queues: Iterable[str]) -> dict[str, Any]:
    """:func:`expand_prefixes` for queues (``crawl/`` and ``crawl*``)."""
    return expand_prefixes(filters, "queue", known_queues)


def _driver(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    for key in DRIVERS:
        value = filters.get(key)
        if value in (None, "", []):
            continue
        values = _as_list(value)
        if len(values) > _MAX_DRIVER_VALUES:
            continue
        if any(isinstance(v, str) and (v.endswith("*") or (key == "queue" and v.endswith("/"))) for v in values):
            continue
        if key == "worker":
            values = [ObjectId(v) if not isinstance(v, ObjectId) else v for v in values]
        return key, values
    return "status", sorted(st.ALL_STATUSES)


def _id_at(when: datetime.datetime) -> ObjectId:
    return ObjectId.from_datetime(when.replace(tzinfo=datetime.UTC))


def list_jobs(collection: Any, filters: Mapping[str, Any], skip: int = 0, limit: int = 50,
              before: ObjectId | None = None, projection: Sequence[str] | Mapping[str, Any] | None = None,
              now: datetime.datetime | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Jobs matching ``filters``, newest first: ``(documents[skip:skip + limit], more)``.

    :param before: only jobs with a smaller id (a cursor: the last id of the previous page).
    :param projection: fields to return (default: all).
    :raises ValueError: a bad filter (from :func:`mrq.actions.build_query`).
    """
    query = build_query(filters)
    wanted = skip + limit + 1
    if filters.get("id") or not limit:
        cond = dict(query)
        if before is not None:
            cond = {"$and": [query, {"_id": {"$lt": before}}]}
        docs = list(collection.find(cond, projection).sort("_id", -1).skip(skip).limit(limit + 1))
        return docs[:limit], len(docs) > limit
    key, values = _driver(filters)
    residual = any(filters.get(k) not in (None, "", []) for k in filters if k != key)
    no_driver = key == "status" and not filters.get("status")
    now = now or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    upper: ObjectId | None = before
    upper_time = before.generation_time.replace(tzinfo=None) if before is not None else now
    found: list[dict[str, Any]] = []
    for number, width in enumerate(WINDOWS):
        if no_driver and residual and number >= INDEXED_WINDOWS:  # sparse matches: one query for the rest
            cond = {"$and": [query, {"_id": {"$lt": upper}}]} if upper is not None else query
            found.extend(collection.find(cond, projection).sort("_id", -1).limit(wanted - len(found)))
            break
        lower = _id_at(upper_time - datetime.timedelta(seconds=width)) if width is not None else None
        id_range: dict[str, Any] = {}
        if lower is not None:
            id_range["$gte"] = lower
        if upper is not None:
            id_range["$lt"] = upper
        found.extend(_window(collection, query, key, values, id_range, residual, projection, wanted - len(found)))
        if len(found) >= wanted or lower is None:
            break
        upper, upper_time = lower, upper_time - datetime.timedelta(seconds=width)
    page = found[skip:skip + limit]
    return page, len(found) > skip + limit


def _window(collection: Any, query: dict[str, Any], key: str, values: list[Any], id_range: dict[str, Any],
            residual: bool, projection: Any, wanted: int) -> list[dict[str, Any]]:
    """The jobs of one id window matching the query, newest first (at least ``wanted`` if there are)."""
    field = "_id" if key == "id" else key
    if not residual:  # the driver is the whole filter: read the documents straight from its index
        docs: list[dict[str, Any]] = []
        for value in values:
            cond: dict[str, Any] = {field: value}
            if id_range:
                cond["_id"] = id_range
            docs.extend(collection.find(cond, projection))
        docs.sort(key=lambda d: d["_id"], reverse=True)
        return docs
    ids: list[ObjectId] = []
    for value in values:
        cond = {field: value}
        if id_range:
            cond["_id"] = id_range
        ids.extend(d["_id"] for d in collection.find(cond, {"_id": 1}))
    ids.sort(reverse=True)
    out: list[dict[str, Any]] = []
    chunk = max(_CHUNK, wanted)
    for start in range(0, len(ids), chunk):
        # _id first: servers that plan clause by clause look the ids up, then check the rest of the query.
        cond = {"_id": {"$in": ids[start:start + chunk]}}
        if "_id" in query:
            cond = {"$and": [cond, query]}
        else:
            cond.update(query)
        batch = list(collection.find(cond, projection))
        batch.sort(key=lambda d: d["_id"], reverse=True)
        out.extend(batch)
        if len(out) >= wanted:
            break
    return out
