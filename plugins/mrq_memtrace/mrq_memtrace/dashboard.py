"""mrq-memtrace in mrq-dashboard: a "Memory leaks" page (the leak report of every worker running the plugin)
and, on a job's page, a panel with its ``memory_diff`` and the types that grew while it ran.

Implemented with the dashboard's own hooks (declared by mrq-dashboard through ``mrq_add_hookspecs``), marked
``optionalhook`` so that this plugin loads the same in a worker, where the dashboard is not enabled. Nothing here
imports the dashboard: the data comes from the workers' reports (``report["memtrace"]`` in ``mrq_workers``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from mrq.hookspecs import hookimpl

__all__ = ["mrq_dashboard_pages", "mrq_dashboard_panels", "fetch"]

COLUMNS = ["Worker", "Mode", "Task path / allocation site", "Jobs", "Growth", "What grew"]


def _kib(n: Any) -> str:
    return f"{(n or 0) / 1024:+,.1f} KiB"


def fetch(args: dict[str, str]) -> dict[str, Any]:
    """One row per task path (per-job mode) or growing allocation site (tracemalloc mode) of each worker."""
    from mrq.context import connections

    rows: list[list[Any]] = []
    workers = connections.mongodb_jobs["mrq_workers"].find({"memtrace": {"$exists": True}},
                                                           {"name": 1, "memtrace": 1, "status": 1}).limit(200)
    for w in workers:
        name, data = {"text": str(w.get("name") or w["_id"]), "link": "workers"}, w.get("memtrace") or {}
        for task in data.get("tasks") or []:
            grew = ", ".join(f"{t['type']} {t['delta']:+d}" for t in task.get("types", [])[:5])
            rows.append([name, "per job", {"text": task["path"], "link": "jobs?path=" + quote(task["path"])},
                         task.get("jobs", 0), _kib(task.get("memory_diff")), grew])
        for site in data.get("sites") or []:
            rows.append([name, "tracemalloc", f"{site['site']}  {site.get('code', '')}".strip(), "",
                         _kib(site.get("growth")), f"{site.get('count', 0)} blocks, grew {site.get('intervals', 0)} "
                                                   "times"])
    text = (f"{len(rows)} item(s), largest growth first within each worker." if rows else
            "No report yet: run workers with --plugins memtrace (or --trace_memory --greenlets 1).")
    return {"columns": COLUMNS, "rows": rows, "text": text}


@hookimpl(optionalhook=True)
def mrq_dashboard_pages() -> list[dict[str, Any]]:
    return [{"name": "memory", "title": "Memory leaks", "fetch": fetch,
             "description": "What keeps growing in each worker running mrq-memtrace: per task (object types and "
                            "memory_diff of its jobs) or per allocation site (tracemalloc)."}]


@hookimpl(optionalhook=True)
def mrq_dashboard_panels(page: str, job: dict[str, Any] | None) -> list[dict[str, Any]]:
    if page != "job" or not job or "memory_diff" not in job:
        return []
    rows = [["memory_diff", _kib(job["memory_diff"])]]
    rows += [[f"grew: {g['type']}", f"{g['delta']:+d} (now {g['count']})"] for g in job.get("memory_growth") or []]
    return [{"title": "Memory (mrq-memtrace)", "rows": rows}]
