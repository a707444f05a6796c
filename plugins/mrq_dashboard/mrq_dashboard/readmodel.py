"""What the dashboard reads: counts, queues, workers, jobs, logs, plugins; through MRQ's public API only.

Cheap reads are live on every request: queue sizes and pauses (one pipelined Redis call), workers (a small
collection plus one ``MGET`` of their heartbeats), one job, its logs, the jobs list (id windows over indexes,
:mod:`mrq_dashboard.jobquery`). Reads that would scan the jobs collection (counts by status, queue and task
path; failures by task path and exception type) are aggregations shared through :class:`SharedCache`:
computed at most once per ``--dashboard_cache_ttl`` seconds per process, their age is returned with them.
"""

from __future__ import annotations

import json
import shlex
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from bson import ObjectId
from mrq import status as st
from mrq.context import connections, get_broker
from mrq.history import merge
from mrq.job import JOBS
from mrq.logger import LOGS
from mrq.worker import WORKERS

from mrq_dashboard.cache import SharedCache
from mrq_dashboard.jobquery import expand_prefixes, list_jobs

__all__ = ["ReadModel", "STATUS_GROUPS", "LIST_FIELDS", "NotFound", "recent_rate"]

#: Named groups of statuses offered by the jobs filters.
STATUS_GROUPS: dict[str, list[str]] = {
    "waiting": [st.QUEUED, st.RETRY, st.INTERRUPT],
    "running": [st.STARTED],
    "failing": [st.FAILED, st.MAXRETRIES, st.TIMEOUT, st.ABORT, st.MAXWORKERDEATHS],
    "done": [st.SUCCESS],
    "stopped": [st.CANCEL, st.MAXCONCURRENCY],
}
_STATUS_ORDER = [st.QUEUED, st.STARTED, st.RETRY, st.INTERRUPT, st.SUCCESS, st.FAILED, st.MAXRETRIES, st.TIMEOUT,
                 st.ABORT, st.MAXWORKERDEATHS, st.CANCEL, st.MAXCONCURRENCY]
#: Fields of a job read for the lists (the big ones, result and tracebacks, are read on the job page).
LIST_FIELDS = ["path", "params", "queue", "status", "worker", "datequeued", "datestarted", "dateupdated",
               "totaltime", "retry_count", "exceptiontype", "progress"]
_PARAMS_TEXT = 300


class NotFound(LookupError):
    """No such job (or page)."""


def _oid(value: str, what: str = "job id") -> ObjectId:
    if not isinstance(value, str) or not ObjectId.is_valid(value):
        raise ValueError(f"{value!r} is not a {what} (24 hexadecimal digits).")
    return ObjectId(value)


def _get_path(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class ReadModel:
    """The dashboard's reads for one configuration."""

    def __init__(self, config: Mapping[str, Any], cache: SharedCache) -> None:
        self.config = config
        self.cache = cache

    @property
    def db(self) -> Any:
        return connections.mongodb_jobs

    @property
    def broker(self) -> Any:
        return get_broker()

    # ------------------------------------------------------------------ shared aggregations
    def counts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Jobs by status, queue and task path: one ``$group`` over the collection, cached."""
        def compute() -> dict[str, Any]:
            rows = self.db[JOBS].aggregate([{"$group": {
                "_id": {"s": "$status", "q": "$queue", "p": "$path"}, "n": {"$sum": 1}}}])
            by_status: dict[str, int] = defaultdict(int)
            by_queue: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            by_path: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for row in rows:
                key, n = row["_id"], int(row["n"])
                status, queue, path = str(key.get("s")), str(key.get("q")), str(key.get("p"))
                by_status[status] += n
                by_queue[queue][status] += n
                by_path[path][status] += n
            return {"by_status": dict(by_status), "by_queue": {q: dict(v) for q, v in by_queue.items()},
                    "by_path": {p: dict(v) for p, v in by_path.items()}, "total": sum(by_status.values())}

        cached = self.cache.get("counts", compute)
        return cached.value, cached.meta()

    def failures(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Failed jobs by task path and exception type (served by the status index), cached."""
        def compute() -> list[dict[str, Any]]:
            rows = self.db[JOBS].aggregate([
                {"$match": {"status": {"$in": STATUS_GROUPS["failing"]}}},
                {"$group": {"_id": {"p": "$path", "e": "$exceptiontype"}, "n": {"$sum": 1},
                            "last": {"$max": "$dateupdated"}}}])
            out = [{"path": r["_id"].get("p"), "exceptiontype": r["_id"].get("e") or "", "count": int(r["n"]),
                    "last": r.get("last")} for r in rows]
            out.sort(key=lambda r: (-r["count"], str(r["path"]), str(r["exceptiontype"])))
            return out

        cached = self.cache.get("failures", compute)
        return cached.value, cached.meta()

    # ------------------------------------------------------------------ pages
    def statuses(self) -> dict[str, Any]:
        counts, meta = self.counts()
        by_status = counts["by_status"]
        order = [s for s in _STATUS_ORDER if s in by_status] + sorted(set(by_status) - set(_STATUS_ORDER))
        return {"statuses": [{"status": s, "count": by_status[s]} for s in order],
                "queues": counts["by_queue"], "total": counts["total"], "counts": meta}

    def _worker_docs(self) -> list[dict[str, Any]]:
        return list(self.db[WORKERS].find({}, {"config": 0}).sort("datestarted", -1).limit(1000))

    def _alive(self, docs: list[dict[str, Any]]) -> dict[str, bool]:
        return self.broker.alive([str(d["_id"]) for d in docs]) if docs else {}

    def plugins(self, local: list[dict[str, Any]]) -> dict[str, Any]:
        """The plugins the live workers run, from their reports, beside those of this dashboard process
        (``local``, :meth:`mrq.plugins.PluginManager.describe`): each row gets ``workers`` (how many live workers
        run it) and ``worker_versions``; a plugin only the workers have gets a row of its own."""
        docs = [d for d in self._worker_docs() if d.get("status") != "stop"]
        alive = self._alive(docs)
        live = [d for d in docs if alive.get(str(d["_id"]))]
        rows = {r["name"]: dict(r, workers=0, worker_versions=[]) for r in local}
        for doc in live:
            for plugin in doc.get("plugins") or []:
                name = str(plugin.get("name") or "")
                if not name:
                    continue
                row = rows.setdefault(name, {"name": name, "version": "", "enabled": False, "hooks": [],
                                             "source": "", "workers": 0, "worker_versions": []})
                row["workers"] += 1
                if not row["hooks"]:  # not enabled here: the hooks the workers implement
                    row["hooks"] = [str(h) for h in plugin.get("hooks") or []]
                version = str(plugin.get("version") or "")
                if version and version not in row["worker_versions"]:
                    row["worker_versions"].append(version)
        return {"plugins": sorted(rows.values(), key=lambda r: r["name"]), "workers_alive": len(live)}

    def queues(self, skip: int = 0, limit: int = 100) -> dict[str, Any]:
        counts, meta = self.counts()
        broker = self.broker
        names = sorted(set(broker.known_queues()) | set(counts["by_queue"]))
        page = names[skip:skip + limit]
        sizes = broker.sizes(page) if page else {}
        paused = broker.paused()
        docs = self._worker_docs()
        workers = [d for d in docs if d.get("status") != "stop"]
        alive = self._alive(workers)
        rate: dict[str, float] = defaultdict(float)
        for doc in workers:
            if not alive.get(str(doc["_id"])):
                continue
            per_second = recent_rate(doc.get("history"))
            serving = doc.get("active_queues") or doc.get("queues") or []
            for q in page:
                if q in serving or any(s.endswith("/") and q.startswith(s) for s in serving):
                    rate[q] += per_second
        rows = []
        for q in page:
            size, delayed = sizes.get(q, (0, 0))
            root = q.split("/", 1)[0] + "/" if "/" in q else None
            jobs_per_second = round(rate.get(q, 0.0), 2)
            rows.append({"name": q, "size": size, "delayed": delayed,
                         "paused": q in paused or (root is not None and root in paused),
                         "counts": counts["by_queue"].get(q, {}), "jobs_per_second": jobs_per_second,
                         "eta_seconds": round(size / jobs_per_second) if size and jobs_per_second else None})
        history = merge((d.get("history") for d in docs), minutes=60)
        return {"queues": rows, "skip": skip, "limit": limit, "more": len(names) > skip + limit,
                "paused": sorted(paused), "history": {"start": history["start"], "queues": history["queues"]},
                "counts": meta}

    def workers(self, skip: int = 0, limit: int = 100) -> dict[str, Any]:
        docs = list(self.db[WORKERS].find({}, {"config": 0}).sort("datestarted", -1).skip(skip).limit(limit + 1))
        more = len(docs) > limit
        docs = docs[:limit]
        alive = self._alive(docs)
        now = time.time()
        start, step, points = _recent_axis(docs, now)
        rows = []
        for d in docs:
            history = d.get("history") or {}
            cpu = (d.get("process") or {}).get("cpu") or {}
            reported = d.get("datereported")
            is_alive = bool(alive.get(str(d["_id"])))
            rows.append({
                "id": d["_id"], "name": d.get("name"), "host": d.get("host"), "pid": d.get("pid"),
                "queues": d.get("queues") or [], "status": d.get("status"), "greenlets": d.get("greenlets"),
                "datestarted": d.get("datestarted"), "datereported": reported,
                "report_age": round(now - _unix(reported), 1) if reported else None,
                "alive": is_alive, "dead": not is_alive and d.get("status") != "stop",
                "cpu_percent": _last(history.get("cpu")),
                "cpu_seconds": round(cpu.get("user", 0) + cpu.get("system", 0), 2),
                "rss_mb": ((d.get("process") or {}).get("mem") or {}).get("rss"),
                "done": (d.get("counters") or {}).get("done", 0),
                "jobs": d.get("jobs") or [],
                # One point per report over the last RECENT reports (per-minute points left a worker of a few
                # minutes with one dot on an hour's axis).
                "history": {"start": start, "step": step,
                            "rss": _on_axis(history.get("recent"), "rss", start, step, points),
                            "cpu": _on_axis(history.get("recent"), "cpu", start, step, points)},
            })
        return {"workers": rows, "skip": skip, "limit": limit, "more": more}

    def overview(self) -> dict[str, Any]:
        docs = self._worker_docs()
        alive = self._alive(docs)
        live = [d for d in docs if alive.get(str(d["_id"]))]
        greenlets = sum(int(d.get("greenlets") or 0) for d in live)
        running = sum(len(d.get("jobs") or []) for d in live)
        history = merge((d.get("history") for d in docs), minutes=60)
        broker = self.broker
        known = broker.known_queues()
        sizes = broker.sizes(known) if known else {}
        counts, meta = self.counts()
        rss = _sum_series(((d.get("history") or {}).get("start"), (d.get("history") or {}).get("rss"))
                          for d in docs)
        return {
            "workers_alive": len(live),
            "workers_dead": sum(1 for d in docs if not alive.get(str(d["_id"])) and d.get("status") != "stop"),
            "greenlets": greenlets, "running": running,
            "pool_usage": round(running / greenlets, 3) if greenlets else None,
            "jobs_per_second": round(recent_rate(history), 2),
            "queued": sum(v[0] for v in sizes.values()), "delayed": sum(v[1] for v in sizes.values()),
            "failing": sum(counts["by_status"].get(s, 0) for s in STATUS_GROUPS["failing"]),
            "total": counts["total"], "counts": meta,
            "history": {"start": history["start"], "done": history["done"], "total": history["total"],
                        "queues": history["queues"], "rss": rss},
        }

    def taskpaths(self, skip: int = 0, limit: int = 100) -> dict[str, Any]:
        counts, meta = self.counts()
        rows = [{"path": p, "total": sum(v.values()), "counts": v} for p, v in counts["by_path"].items()]
        rows.sort(key=lambda r: (-r["total"], r["path"]))
        return {"taskpaths": rows[skip:skip + limit], "skip": skip, "limit": limit,
                "more": len(rows) > skip + limit, "counts": meta}

    def exceptions(self, skip: int = 0, limit: int = 100) -> dict[str, Any]:
        rows, meta = self.failures()
        return {"exceptions": rows[skip:skip + limit], "skip": skip, "limit": limit,
                "more": len(rows) > skip + limit, "statuses": STATUS_GROUPS["failing"], "counts": meta}

    # ------------------------------------------------------------------ jobs
    def jobs(self, filters: Mapping[str, Any], skip: int, limit: int, before: str | None,
             columns: list[dict[str, Any]]) -> dict[str, Any]:
        if filters.get("queue"):
            filters = expand_prefixes(filters, "queue", self.broker.known_queues())
        if _has_wildcard(filters.get("path")):  # known task paths: from the shared counts
            filters = expand_prefixes(filters, "path", self.counts()[0]["by_path"])
        if _has_wildcard(filters.get("exceptiontype")):
            filters = expand_prefixes(filters, "exceptiontype", {r["exceptiontype"] for r in self.failures()[0]})
        fields = _projection(LIST_FIELDS + [c["field"] for c in columns if c.get("field")])
        docs, more = list_jobs(self.db[JOBS], filters, skip=skip, limit=limit,
                               before=_oid(before, "cursor") if before else None, projection=fields,
                               estimates=self._estimates(filters))
        rows = []
        for d in docs:
            params_text = json.dumps(d.get("params"), default=str, sort_keys=True)
            row = {k: d.get(k) for k in LIST_FIELDS if k != "params"}
            row["id"] = d["_id"]
            row["params"] = params_text[:_PARAMS_TEXT] + ("…" if len(params_text) > _PARAMS_TEXT else "")
            row["extra"] = {c["name"]: _get_path(d, c["field"]) for c in columns if c.get("field")}
            rows.append(row)
        return {"jobs": rows, "skip": skip, "limit": limit, "more": more,
                "next_before": rows[-1]["id"] if rows and more else None}

    def _estimates(self, filters: Mapping[str, Any]) -> dict[str, float]:
        """Jobs matched by each filter key alone, from the counts already cached (never computed here)."""
        cached = self.cache.peek("counts")
        if cached is None:
            return {}
        counts, out = cached.value, {}
        for key, table in (("status", {s: {"": n} for s, n in counts["by_status"].items()}),
                           ("queue", counts["by_queue"]), ("path", counts["by_path"])):
            if filters.get(key):
                out[key] = sum(sum((table.get(v) or {}).values()) for v in _listed(filters[key]))
        failures = self.cache.peek("failures")
        if failures is not None and filters.get("exceptiontype"):
            values = _listed(filters["exceptiontype"])
            out["exceptiontype"] = sum(r["count"] for r in failures.value if r["exceptiontype"] in values)
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        oid = _oid(job_id)
        doc = self.db[JOBS].find_one({"_id": oid})
        if doc is None:
            raise NotFound(f"No job {job_id} (it may have expired: finished jobs are deleted after their TTL).")
        doc["id"] = doc.pop("_id")
        doc["stack"] = None
        if doc.get("status") == st.STARTED and doc.get("worker"):
            worker = self.db[WORKERS].find_one({"_id": doc["worker"]}, {"jobs": 1, "name": 1})
            for entry in (worker or {}).get("jobs") or []:
                if entry.get("id") == oid:
                    doc["stack"] = entry.get("stack")
                    doc["stack_reported"] = True
            doc["worker_name"] = (worker or {}).get("name")
        params = doc.get("params") or {}
        doc["command"] = f"mrq-run {shlex.quote(str(doc.get('path', '')))} " \
                         f"{shlex.quote(json.dumps(params, default=str, sort_keys=True))}"
        return doc

    def logs(self, job_id: str, cursor: str | None, limit: int = 1000) -> dict[str, Any]:
        oid = _oid(job_id)
        database = connections.mongodb_logs
        if database is None:
            return {"logs": [], "text": "", "cursor": cursor, "more": False, "disabled": True}
        query: dict[str, Any] = {"job": oid}
        if cursor:
            query["_id"] = {"$gt": _oid(cursor, "log cursor")}
        docs = list(database[LOGS].find(query, {"logs": 1, "date": 1}).sort("_id", 1).limit(limit + 1))
        more = len(docs) > limit
        docs = docs[:limit]
        return {"logs": [{"id": d["_id"], "date": d.get("date"), "text": d.get("logs", "")} for d in docs],
                "text": "\n".join(str(d.get("logs", "")) for d in docs),
                "cursor": docs[-1]["_id"] if docs else cursor, "more": more}


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _has_wildcard(value: Any) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(v, str) and v.endswith("*") for v in values)


def _projection(fields: list[str]) -> list[str]:
    """Fields without path collisions (MongoDB refuses ``params`` with ``params.a``): the shortest path wins."""
    out: list[str] = []
    for field in sorted(set(fields), key=lambda f: (f.count("."), f)):
        if not any(field == kept or field.startswith(kept + ".") for kept in out):
            out.append(field)
    return out


def _unix(value: Any) -> float:
    import datetime

    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=datetime.UTC).timestamp()
    return 0.0


def _recent_axis(docs: list[dict[str, Any]], now: float) -> tuple[int, int, int]:
    """``(start, step, points)`` of a time axis ending now, from the workers' oldest recent sample (at most
    :data:`~mrq.history.RECENT` points, at least 10), ``step`` being their report interval (the median gap
    between their samples): a worker started a minute ago fills the chart."""
    from mrq.history import RECENT

    times = [((d.get("history") or {}).get("recent") or {}).get("t") or [] for d in docs]
    gaps = sorted(b - a for t in times for a, b in zip(t, t[1:], strict=False) if b > a)
    step = max(1, min(60, int(round(gaps[len(gaps) // 2])) if gaps else 10))
    oldest = min((t[0] for t in times if t), default=int(now))
    points = max(10, min(RECENT, int((now - oldest) // step) + 1))
    return int(now) - step * (points - 1), step, points


def _on_axis(recent: Any, key: str, start: int, step: int, points: int) -> list[float | None]:
    """A worker's ``recent`` samples of ``key`` placed on the axis of :func:`_recent_axis` (``None``: no sample)."""
    values: list[float | None] = [None] * points
    if not isinstance(recent, dict):
        return values
    for t, value in zip(recent.get("t") or [], recent.get(key) or [], strict=False):
        index = int(round((t - start) / step))
        if 0 <= index < points and value is not None:
            values[index] = value
    return values


def _last(values: Any) -> Any:
    if not values:
        return None
    for value in reversed(values):
        if value is not None:
            return value
    return None


def _sum_series(series: Any, minutes: int = 60) -> list[float | None]:
    """Per-minute sums of several workers' ``(start, values)`` series over the last hour (``None``: no sample)."""
    start = int(time.time() // 60 * 60) - 60 * (minutes - 1)
    out: list[float | None] = [None] * minutes
    for first, values in series:
        for i, value in enumerate(values or []):
            slot = (int(first or 0) + 60 * i - start) // 60
            if 0 <= slot < minutes and value is not None:
                out[slot] = (out[slot] or 0) + value
    return out


def recent_rate(history: Mapping[str, Any] | None, now: float | None = None) -> float:
    """Jobs finished per second over the previous minute and the current one so far (a (merged) history)."""
    if not history:
        return 0.0
    now = time.time() if now is None else now
    current = int(now // 60 * 60)
    start = int(history.get("start") or 0)
    total = 0
    for values in (history.get("done") or {}).values():
        for i, value in enumerate(values or []):
            if start + 60 * i in (current, current - 60):
                total += int(value or 0)
    return total / (60.0 + (now - current))
