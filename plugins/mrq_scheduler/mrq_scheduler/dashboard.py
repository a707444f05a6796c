"""The scheduler's page in mrq-dashboard: "Scheduled jobs" (entries, next run, last queued, last job).

Implemented with the dashboard's own hooks (declared by mrq-dashboard through ``mrq_add_hookspecs``), marked
``optionalhook`` so that this plugin loads the same in a worker, where the dashboard is not enabled. Nothing
here imports the dashboard.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from mrq.hookspecs import hookimpl
from mrq_scheduler.scheduler import COLLECTION

__all__ = ["mrq_dashboard_pages", "fetch"]

COLUMNS = ["Task path", "Params", "Queue", "Schedule", "Next run (UTC)", "Last queued (UTC)", "Last job", "Queued"]


def fetch(args: dict[str, str]) -> dict[str, Any]:
    """The rows of the page: one per entry stored in ``mrq_scheduled_jobs`` (synced by the workers)."""
    from mrq.context import connections

    docs = list(connections.mongodb_jobs[COLLECTION].find({}).sort([("path", 1), ("next_run", 1)]).limit(1000))
    rows = []
    for d in docs:
        path, last_job = str(d.get("path", "")), d.get("last_job")
        rows.append([
            {"text": path, "link": "jobs?path=" + quote(path)},
            json.dumps(d.get("params") or {}, sort_keys=True, default=str),
            d.get("queue") or "",
            d.get("description") or json.dumps(d.get("schedule"), default=str),
            d.get("next_run"),
            d.get("datelastqueued"),
            {"text": str(last_job), "link": f"jobs/{last_job}"} if last_job else "",
            d.get("queued_count", 0),
        ])
    text = (f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'} of SCHEDULER_TASKS, queued by the workers running "
            "--plugins scheduler." if rows else
            "No scheduled entry stored yet: start a worker with --plugins scheduler and SCHEDULER_TASKS.")
    return {"columns": COLUMNS, "rows": rows, "text": text}


@hookimpl(optionalhook=True)
def mrq_dashboard_pages() -> list[dict[str, Any]]:
    return [{"name": "scheduled", "title": "Scheduled jobs", "fetch": fetch,
             "description": "Recurring jobs of the scheduler plugin: when each runs next, and what it queued last."}]
