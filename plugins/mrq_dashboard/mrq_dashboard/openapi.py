"""The OpenAPI 3.1 description of the dashboard's JSON API, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_spec", "ROUTES"]

_FILTER_PARAMS = [
    ("queue", "Queue name; several comma-separated; 'q/' = every subqueue of q."),
    ("path", "Task path; several comma-separated; 'tasks.io.*' = every path with that prefix."),
    ("status", "Status; several comma-separated; group names waiting, running, failing, done, stopped."),
    ("worker", "Worker id."),
    ("exceptiontype", "Exception class name (failed jobs)."),
    ("id", "Job id; several comma-separated."),
    ("params", 'JSON object: equality on each param, e.g. {"user": 42}.'),
    ("after", "ISO date: dateupdated >= after."),
    ("before", "ISO date: dateupdated < before."),
]
_PAGING = [("skip", "Rows to skip (default 0)."), ("limit", "Rows to return, 1 to 1000.")]

#: (method, path, summary, query parameters, has a JSON filter body)
ROUTES: list[tuple[str, str, str, list[tuple[str, str]], bool]] = [
    ("get", "/api/config", "Dashboard settings and the csrf_token to send as X-CSRF-Token with every POST.", [], False),
    ("get", "/api/overview", "Workers alive, pool usage, jobs/s, queued, failing, last hour's series.", [], False),
    ("get", "/api/statuses", "Jobs per status and per queue and status (cached counts; see counts.age).", [], False),
    ("get", "/api/queues", "Queues: size, delayed, paused, counts per status, jobs/s, ETA.", _PAGING, False),
    ("get", "/api/workers", "Workers: host, pid, queues, status, last report, alive, CPU, memory, jobs with "
                            "their stacks.", _PAGING, False),
    ("get", "/api/taskpaths", "Jobs per task path and status (cached).", _PAGING, False),
    ("get", "/api/exceptions", "Failed jobs per task path and exception type (cached).", _PAGING, False),
    ("get", "/api/jobs", "Jobs matching the filter, newest first: {jobs: [...], more, next_before}.",
     _FILTER_PARAMS + _PAGING + [("cursor", "Job id: only older jobs (the next_before of the previous page).")],
     False),
    ("get", "/api/jobs/count", "How many jobs a bulk action would touch: {count}.",
     _FILTER_PARAMS + [("action", "cancel or requeue.")], False),
    ("get", "/api/jobs/{job_id}", "One job's document: params, result, traceback, traceback_history, current "
                                  "stack while it runs, mrq-run command.", [], False),
    ("get", "/api/jobs/{job_id}/logs", "The job's log lines after a cursor: {logs, text, cursor, more}.",
     [("cursor", "The cursor of the previous answer (omit for the first lines)."), ("limit", "Log documents.")],
     False),
    ("get", "/api/plugins", "Plugins the live workers run (their reports) and this dashboard's.", [], False),
    ("get", "/api/p/{name}", "Data of a page added by a plugin: {columns, rows, text}.", [], False),
    ("get", "/api/openapi.json", "This description.", [], False),
    ("post", "/api/jobs/{job_id}/cancel", "Cancel one job (a running one stops within about a second).", [], False),
    ("post", "/api/jobs/{job_id}/requeue", "Queue one job again.", [("to_queue", "Another queue.")], False),
    ("post", "/api/jobs/cancel", "Cancel every job matching the filter body: {matched, cancelled, stopped}.",
     [], True),
    ("post", "/api/jobs/requeue", "Requeue every job matching the filter body: {matched, requeued, running}.",
     [("to_queue", "Another queue."), ("reset_retries", "0 keeps retry_count.")], True),
    ("post", "/api/queues/{name}/pause", "Workers stop dequeuing from this queue.", [], False),
    ("post", "/api/queues/{name}/resume", "Workers dequeue from this queue again.", [], False),
]


def openapi_spec(version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, params, body in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": [{"name": n, "in": "query", "required": False, "description": d,
                            "schema": {"type": "string"}} for n, d in params],
            "responses": {"200": {"description": "JSON object (ids and dates as strings)."},
                          "400": {"description": "Bad argument, or a Host not in --dashboard_allowed_hosts: "
                                                 "{error: message}."},
                          "401": {"description": "--dashboard_httpauth is set and not given."}},
        }
        for name in ("job_id", "name"):
            if "{" + name + "}" in path:
                operation["parameters"].insert(0, {"name": name, "in": "path", "required": True,
                                                   "schema": {"type": "string"}})
        if method == "post":
            operation["parameters"].append({"name": "X-CSRF-Token", "in": "header", "required": True,
                                            "description": "csrf_token of GET /api/config.",
                                            "schema": {"type": "string"}})
            operation["responses"]["403"] = {"description": "Wrong CSRF token, or a read-only dashboard."}
        if path.startswith("/api/jobs/{job_id}"):
            operation["responses"]["404"] = {"description": "No such job."}
        if body:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "description": "A job filter: keys " + ", ".join(n for n, _ in _FILTER_PARAMS),
                "additionalProperties": False}}}}
        paths.setdefault(path, {})[method] = operation
    return {"openapi": "3.1.0",
            "info": {"title": "MRQ dashboard API", "version": version,
                     "description": "The JSON API of mrq-dashboard: what its pages use."},
            "paths": paths}
