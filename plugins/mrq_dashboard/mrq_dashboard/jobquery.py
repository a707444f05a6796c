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
documents of the window are checked against the rest of the query here (:func:`matches`, which evaluates
the few operators :func:`mrq.actions.build_query` produces, with MongoDB's semantics): a second query by
``_id $in`` would cost more on servers that check such a list against each document. The tests compare the
result with MongoDB's own answer to the filter.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bson import ObjectId
from mrq import status as st
from mrq.actions import build_query

__all__ = ["list_jobs", "matches", "expand_prefixes", "expand_queue_prefixes", "DRIVERS", "WINDOWS", "INDEXED_WINDOWS"]

#: Filter keys that can drive the read, most selective first.
DRIVERS = ("exceptiontype", "path", "worker", "queue", "status")
#: Widths of the successive id windows, in seconds (``None``: everything older).
WINDOWS: tuple[float | None, ...] = (3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400, None)
#: Without an indexed equality in the filter (only params or dates), this many windows are read by status;
#: older jobs are then read by one plain query (the server scans: a filter on params alone cannot use an index).
INDEXED_WINDOWS = 2
_MAX_DRIVER_VALUES = 50


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


def _driver(filters: Mapping[str, Any], estimates: Mapping[str, float] | None = None) -> tuple[str, list[Any]]:
    """The equality that drives the read: the one with the fewest jobs when ``estimates`` (jobs per filter key,
    from the cached counts) say, else the first of :data:`DRIVERS` in the filter."""
    candidates: list[tuple[str, list[Any]]] = []
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
        candidates.append((key, values))
    if not candidates:
        return "status", sorted(st.ALL_STATUSES)
    if estimates:
        order = {key: i for i, key in enumerate(DRIVERS)}
        return min(candidates, key=lambda c: (estimates.get(c[0], float("inf")), order[c[0]]))
    return candidates[0]


def _id_at(when: datetime.datetime) -> ObjectId:
    return ObjectId.from_datetime(when.replace(tzinfo=datetime.UTC))


def list_jobs(collection: Any, filters: Mapping[str, Any], skip: int = 0, limit: int = 50,
              before: ObjectId | None = None, projection: Sequence[str] | Mapping[str, Any] | None = None,
              now: datetime.datetime | None = None,
              estimates: Mapping[str, float] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Jobs matching ``filters``, newest first: ``(documents[skip:skip + limit], more)``.

    :param before: only jobs with a smaller id (a cursor: the last id of the previous page).
    :param projection: fields to return (default: all).
    :param estimates: how many jobs each filter key matches (from cached counts), to read by the most selective.
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
    key, values = _driver(filters, estimates)
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
        found.extend(_window(collection, query, key, values, id_range, residual, projection))
        if len(found) >= wanted or lower is None:
            break
        upper, upper_time = lower, upper_time - datetime.timedelta(seconds=width)
    page = found[skip:skip + limit]
    return page, len(found) > skip + limit


def _window(collection: Any, query: dict[str, Any], key: str, values: list[Any], id_range: dict[str, Any],
            residual: bool, projection: Any) -> list[dict[str, Any]]:
    """The jobs of one id window matching the query, newest first."""
    fields = projection
    if residual and projection is not None:  # the fields the rest of the query looks at, too
        fields = sorted(set(projection) | {k.split(".")[0] for k in _fields_of(query)})
    docs: list[dict[str, Any]] = []
    for value in values:
        cond: dict[str, Any] = {key: value}
        if id_range:
            cond["_id"] = id_range
        batch = collection.find(cond, fields)
        docs.extend(d for d in batch if not residual or matches(d, query))
    docs.sort(key=lambda d: d["_id"], reverse=True)
    return docs


def _fields_of(query: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for key, cond in query.items():
        if key in ("$and", "$or"):
            for part in cond:
                out |= _fields_of(part)
        else:
            out.add(key)
    return out


def _values_at(doc: Any, parts: list[str]) -> list[Any]:
    """Every value a MongoDB query sees at a dotted path: arrays are traversed, and an array also counts whole."""
    if not parts:
        return [doc]
    if isinstance(doc, list):
        return [v for item in doc for v in _values_at(item, parts)]
    if not isinstance(doc, Mapping) or parts[0] not in doc:
        return []
    value = doc[parts[0]]
    found = _values_at(value, parts[1:])
    if not parts[1:] and isinstance(value, list):
        found = [value, *value]
    return found


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # BSON: true is not 1
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _compare(a: Any, b: Any, op: str) -> bool:
    comparable = (isinstance(a, datetime.datetime) and isinstance(b, datetime.datetime)) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)) or (
        isinstance(a, str) and isinstance(b, str)) or (type(a) is type(b) and type(a).__name__ == "ObjectId")
    if not comparable:
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def _condition(values: list[Any], cond: Any) -> bool:
    if isinstance(cond, Mapping) and cond and all(str(k).startswith("$") for k in cond):
        for op, arg in cond.items():
            if op == "$in":
                ok = any(_equal(v, a) for v in values for a in arg) or (not values and None in arg)
            elif op == "$regex":
                ok = any(isinstance(v, str) and re.search(arg, v) is not None for v in values)
            elif op in ("$gt", "$gte", "$lt", "$lte"):
                ok = any(_compare(v, arg, op) for v in values)
            else:
                raise ValueError(f"Operator {op} is not evaluated here (not produced by mrq.actions.build_query).")
            if not ok:
                return False
        return True
    if cond is None:
        return not values or any(v is None for v in values)
    return any(_equal(v, cond) for v in values)


def matches(doc: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether ``doc`` matches ``query``, for the queries of :func:`mrq.actions.build_query` (equality,
    ``$in``, anchored ``$regex``, ``$gte``/``$lt``..., ``$or``, ``$and``; dotted paths through arrays)."""
    for key, cond in query.items():
        if key == "$and":
            if not all(matches(doc, part) for part in cond):
                return False
        elif key == "$or":
            if not any(matches(doc, part) for part in cond):
                return False
        elif not _condition(_values_at(doc, key.split(".")), cond):
            return False
    return True
