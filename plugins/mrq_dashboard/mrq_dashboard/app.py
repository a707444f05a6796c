"""The Flask application: HTML pages (filled by the static JavaScript from the JSON API) and the API.

``create_app(config)`` builds it for a resolved MRQ configuration (the process's MRQ context must be set up
with it: ``mrq.context.set_current_config(config)``, as ``mrq-dashboard`` and :mod:`mrq_dashboard.wsgi` do).
Every route, API included, is documented in the plugin's README; ``/api/openapi.json`` describes the API.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, abort, jsonify, render_template, request
from mrq import status as st
from mrq.actions import FILTER_KEYS, WAITING, cancel_jobs, count_matching, forget_queued, requeue_jobs
from mrq.context import connections, get_broker, get_plugin_manager
from mrq.exceptions import InvalidParams, JobNotFound, MRQError
from mrq.job import Job, queue_job
from mrq.queue import Queue
from werkzeug.exceptions import HTTPException

from mrq_dashboard import __version__
from mrq_dashboard.cache import SharedCache
from mrq_dashboard.hosts import AllowedHosts
from mrq_dashboard.openapi import openapi_spec
from mrq_dashboard.readmodel import STATUS_GROUPS, NotFound, ReadModel
from mrq_dashboard.security import csrf_token_for, install
from mrq_dashboard.serialize import jsonable

__all__ = ["create_app", "PAGES", "MAX_LIMIT"]

log = logging.getLogger("mrq.dashboard")

MAX_LIMIT = 1000
#: The dashboard's own pages: (path name, title).
PAGES = [("overview", "Overview"), ("statuses", "Statuses"), ("queues", "Queues"), ("workers", "Workers"),
         ("jobs", "Jobs"), ("taskpaths", "Task paths"), ("exceptions", "Exceptions"), ("plugins", "Plugins")]
_PAGE_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
_MULTI = ("id", "queue", "status", "worker", "path", "exceptiontype")


class BadRequest(ValueError):
    """A request argument is wrong: answered 400 with the message."""


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"Argument {name}={raw!r} is not an integer.") from None
    if not low <= value <= high:
        raise BadRequest(f"Argument {name}={value} is out of range: use {low} to {high}.")
    return value


def filters_from(args: Mapping[str, Any]) -> dict[str, Any]:
    """The job filter of query arguments: comma-separated values, status group names expanded."""
    filters: dict[str, Any] = {}
    for key in FILTER_KEYS:
        values = args.getlist(key) if hasattr(args, "getlist") else [args[key]] if key in args else []
        values = [v for v in values if v not in (None, "")]
        if not values:
            continue
        if key in _MULTI:
            items = [part.strip() for v in values for part in str(v).split(",") if part.strip()]
            if key == "status":
                items = [s for item in items for s in STATUS_GROUPS.get(item, [item])]
                unknown = [item for item in items if item not in st.ALL_STATUSES]
                if unknown:
                    groups = "; ".join(f"{g} ({', '.join(members)})" for g, members in STATUS_GROUPS.items())
                    raise ValueError(f"Unknown status {', '.join(map(repr, unknown))}: use a status "
                                     f"({', '.join(sorted(st.ALL_STATUSES))}) or a group: {groups}.")
            filters[key] = items if len(items) != 1 else items[0]
        else:
            filters[key] = values[-1]
    return filters


def _plugin_items(hook_name: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item returned by the implementations of one of the dashboard's hooks, malformed ones dropped."""
    hook = getattr(get_plugin_manager().hook, hook_name)
    items: list[dict[str, Any]] = []
    for group in hook(**kwargs):
        for item in group or []:
            if isinstance(item, Mapping):
                items.append(dict(item))
            else:
                log.warning("Dashboard: %s returned %r, not a dict; ignored", hook_name, item)
    return items


def _pages() -> dict[str, dict[str, Any]]:
    pages = {}
    for page in _plugin_items("mrq_dashboard_pages"):
        name = str(page.get("name", ""))
        if not _PAGE_NAME.match(name) or not callable(page.get("fetch")):
            log.warning("Dashboard: page %r needs a name [a-z0-9_-] and a fetch callable; ignored", name)
            continue
        pages[name] = page
    return pages


def _columns() -> list[dict[str, Any]]:
    return [{"name": str(c.get("name")), "title": str(c.get("title") or c.get("name")), "field": str(c["field"])}
            for c in _plugin_items("mrq_dashboard_job_columns") if c.get("name") and c.get("field")]


def _panels(page: str, job: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = []
    for panel in _plugin_items("mrq_dashboard_panels", page=page, job=job):
        out.append({"title": str(panel.get("title", "")), "rows": panel.get("rows") or [],
                    "text": panel.get("text")})
    return out


_ROUTE_RULE = re.compile(r"^/[A-Za-z0-9_./-]{1,200}$")


def _add_plugin_routes(app: Flask) -> None:
    """The routes of ``mrq_dashboard_routes``: GET only; a malformed one, or one taken by the dashboard, is logged
    and left out."""
    for route in _plugin_items("mrq_dashboard_routes"):
        rule, name, view = str(route.get("rule", "")), str(route.get("name", "")), route.get("view")
        if not _ROUTE_RULE.match(rule) or ".." in rule or not _PAGE_NAME.match(name) or not callable(view):
            log.warning("Dashboard: route %r needs a rule /[A-Za-z0-9_./-], a name [a-z0-9_-] and a view callable; "
                        "ignored", rule)
            continue
        taken = app.url_map.bind("localhost").test(rule, method="GET") or f"plugin_route_{name}" in app.view_functions
        if taken or rule.startswith(("/api/", "/static/", "/p/", "/jobs/")):
            log.warning("Dashboard: route %s (%s) of a plugin is taken (by the dashboard or another plugin); ignored",
                        rule, name)
            continue

        def plugin_view(view: Any = view) -> Response:
            body, status, headers = view(dict(request.args.items()))
            return Response(body, status=int(status), headers=dict(headers or {}))

        app.add_url_rule(rule, endpoint=f"plugin_route_{name}", view_func=plugin_view, methods=["GET"])


def create_app(config: Mapping[str, Any]) -> Flask:
    """The dashboard's Flask application for ``config`` (a resolved MRQ configuration)."""
    if not hasattr(get_plugin_manager().hook, "mrq_dashboard_routes"):
        raise MRQError("The dashboard plugin is not enabled in MRQ's context: set it up with the dashboard's "
                       "configuration (mrq_dashboard.cli.load_config, or plugins=['dashboard']) before create_app")
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # queue names may end with '/' (a root of subqueues)
    app.config["MRQ_CONFIG"] = config
    model = ReadModel(config, SharedCache(float(config.get("dashboard_cache_ttl", 10.0))))
    app.extensions["mrq_dashboard"] = model
    readonly = bool(config.get("dashboard_readonly"))
    token: dict[str, str] = {}

    def csrf_token() -> str:
        if "value" not in token:
            token["value"] = csrf_token_for(get_broker())
        return token["value"]

    hosts = AllowedHosts(config.get("dashboard_allowed_hosts") or [], str(config.get("dashboard_ip", "127.0.0.1")))
    install(app, str(config.get("dashboard_httpauth") or ""), readonly, csrf_token, hosts)
    log.info("Dashboard: answering the Host names %s (--dashboard_allowed_hosts)", hosts)

    def ok(data: Any, status: int = 200) -> tuple[Response, int]:
        return jsonify(jsonable(data)), status

    # ------------------------------------------------------------------ MongoDB down: 503 at once, with the reason
    mongodb_down: dict[str, str] = {}  # "reason" while MongoDB does not answer

    def unavailable(exc: BaseException) -> tuple[Response, int]:
        from mrq.connections import unreachable

        mongodb_down["reason"] = unreachable("MongoDB", str(config.get("mongodb_jobs")), "mongodb",
                                             "MRQ_MONGODB_JOBS", exc) + " (then reload: the dashboard retries)"
        response, status = ok({"error": mongodb_down["reason"]}, 503)
        response.headers["Retry-After"] = "5"
        return response, status

    app.extensions["mrq_dashboard_mongodb_down"] = mongodb_down  # set by mrq-dashboard when its start-up ping fails

    @app.before_request
    def mongodb_check() -> Any:
        """While MongoDB is known to be down, one quick ping per API request (not 30 s of server selection)."""
        if not mongodb_down or not request.path.startswith("/api/") or request.path == "/api/config":
            return None
        import pymongo

        try:
            with pymongo.timeout(2):
                connections.mongodb_jobs.command("ping")
        except pymongo.errors.PyMongoError as exc:
            return unavailable(exc)
        mongodb_down.clear()
        log.info("Dashboard: MongoDB answers again")
        return None

    # ------------------------------------------------------------------ errors: JSON, never a trace
    @app.errorhandler(BadRequest)
    @app.errorhandler(ValueError)
    @app.errorhandler(InvalidParams)
    def bad_request(exc: Exception) -> tuple[Response, int]:
        return ok({"error": str(exc)}, 400)

    @app.errorhandler(NotFound)
    @app.errorhandler(JobNotFound)
    def not_found(exc: Exception) -> tuple[Response, int]:
        return ok({"error": str(exc)}, 404)

    @app.errorhandler(MRQError)
    def conflict(exc: Exception) -> tuple[Response, int]:
        return ok({"error": str(exc)}, 409)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if request.path.startswith("/api/"):
            return ok({"error": f"{exc.code} {exc.name}: {exc.description}"}, exc.code or 500)
        return exc

    @app.errorhandler(Exception)
    def server_error(exc: Exception) -> tuple[Response, int]:
        import pymongo.errors

        if isinstance(exc, pymongo.errors.ConnectionFailure):  # server selection timed out, connection refused
            log.warning("Dashboard: %s %s: MongoDB did not answer: %s", request.method, request.path,
                        type(exc).__name__)
            return unavailable(exc)
        log.exception("Dashboard: %s %s failed", request.method, request.path)
        return ok({"error": f"Internal error ({type(exc).__name__}); the dashboard's log has the details."}, 500)

    # ------------------------------------------------------------------ pages
    def render(page: str, title: str, **context: Any) -> str:
        return render_template(f"{page}.html", page=page,
                               title=title, pages=PAGES, plugin_pages=[(n, str(p.get("title") or n))
                                                                     for n, p in sorted(_pages().items())],
                               readonly=readonly, version=__version__,
                               autorefresh=float(config.get("dashboard_autorefresh", 5.0)), **context)

    for name, title in PAGES:
        def view(name: str = name, title: str = title) -> str:
            return render(name, title)
        app.add_url_rule("/" if name == "overview" else f"/{name}", endpoint=f"page_{name}", view_func=view)

    @app.get("/jobs/<job_id>")
    def job_page(job_id: str) -> str:
        return render("job", "Job", job_id=job_id)

    @app.get("/p/<name>")
    def plugin_page(name: str) -> str:
        page = _pages().get(name)
        if page is None:
            abort(404)
        return render("plugin_page", str(page.get("title") or name), plugin_name=name,
                      description=str(page.get("description") or ""))

    # ------------------------------------------------------------------ API: reads
    @app.get("/api/config")
    def api_config() -> Any:
        return ok({"csrf_token": csrf_token(), "readonly": readonly, "version": __version__,
                   "autorefresh": float(config.get("dashboard_autorefresh", 5.0)),
                   "cache_ttl": float(config.get("dashboard_cache_ttl", 10.0)),
                   "status_groups": STATUS_GROUPS, "filter_keys": list(FILTER_KEYS), "max_limit": MAX_LIMIT,
                   "columns": _columns(),
                   "pages": [{"name": n, "title": str(p.get("title") or n)} for n, p in sorted(_pages().items())]})

    @app.get("/api/overview")
    def api_overview() -> Any:
        data = model.overview()
        data["panels"] = _panels("overview")
        return ok(data)

    @app.get("/api/statuses")
    def api_statuses() -> Any:
        return ok(model.statuses())

    @app.get("/api/queues")
    def api_queues() -> Any:
        return ok(model.queues(_int_arg("skip", 0, 0, 10**9), _int_arg("limit", 100, 1, MAX_LIMIT)))

    @app.get("/api/workers")
    def api_workers() -> Any:
        return ok(model.workers(_int_arg("skip", 0, 0, 10**9), _int_arg("limit", 100, 1, MAX_LIMIT)))

    @app.get("/api/taskpaths")
    def api_taskpaths() -> Any:
        return ok(model.taskpaths(_int_arg("skip", 0, 0, 10**9), _int_arg("limit", 100, 1, MAX_LIMIT)))

    @app.get("/api/exceptions")
    def api_exceptions() -> Any:
        return ok(model.exceptions(_int_arg("skip", 0, 0, 10**9), _int_arg("limit", 100, 1, MAX_LIMIT)))

    @app.get("/api/jobs")
    def api_jobs() -> Any:
        return ok(model.jobs(filters_from(request.args), _int_arg("skip", 0, 0, 100_000),
                             _int_arg("limit", 50, 1, MAX_LIMIT), request.args.get("cursor") or None, _columns()))

    @app.get("/api/jobs/count")
    def api_jobs_count() -> Any:
        action = request.args.get("action", "cancel")
        filters = filters_from(request.args)
        return ok({"action": action, "filter": filters, "count": count_matching(filters, action)})

    @app.get("/api/jobs/<job_id>")
    def api_job(job_id: str) -> Any:
        doc = model.job(job_id)
        doc["panels"] = _panels("job", doc)
        return ok(doc)

    @app.get("/api/jobs/<job_id>/logs")
    def api_job_logs(job_id: str) -> Any:
        return ok(model.logs(job_id, request.args.get("cursor") or None, _int_arg("limit", 1000, 1, 10_000)))

    @app.get("/api/plugins")
    def api_plugins() -> Any:
        return ok(model.plugins(get_plugin_manager().describe()))

    @app.get("/api/p/<name>")
    def api_plugin_page(name: str) -> Any:
        page = _pages().get(name)
        if page is None:
            raise NotFound(f"No dashboard page {name!r}; pages: {', '.join(sorted(_pages())) or 'none'}.")
        data = page["fetch"](dict(request.args.items())) or {}
        return ok({"name": name, "title": str(page.get("title") or name), "text": data.get("text"),
                   "columns": [str(c) for c in data.get("columns") or []], "rows": data.get("rows") or []})

    @app.get("/api/openapi.json")
    def api_openapi() -> Any:
        return ok(openapi_spec(__version__))

    # ------------------------------------------------------------------ API: actions
    def _job(job_id: str) -> Job:
        model.job(job_id)  # 400 on a bad id, 404 if absent
        return Job(job_id)

    @app.post("/api/jobs/<job_id>/cancel")
    def api_job_cancel(job_id: str) -> Any:
        job = _job(job_id)
        before = connections.mongodb_jobs["mrq_jobs"].find_one({"_id": job.id}, {"status": 1, "queue": 1}) or {}
        cancelled = job.cancel()
        if cancelled and before.get("status") in WAITING:  # out of its queue's size, as a bulk cancel does
            forget_queued(get_broker(), [(job_id, str(before.get("queue") or ""))])
        return ok({"id": job_id, "cancelled": cancelled})

    @app.post("/api/jobs/<job_id>/requeue")
    def api_job_requeue(job_id: str) -> Any:
        job = _job(job_id)
        return ok({"id": job_id, "requeued": job.requeue(queue=request.args.get("to_queue") or None)})

    def _body_filter() -> dict[str, Any]:
        raw = request.get_data(cache=True, as_text=True) or "{}"
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"The body is not valid JSON ({exc}); send a job filter object such as "
                             '{"queue": "default", "status": "failed"}.') from None
        if not isinstance(body, dict):
            raise BadRequest(f"The body must be a JSON object (a job filter), not {type(body).__name__}.")
        return body

    def bulk(action: str, run: Callable[[dict[str, Any]], dict[str, int]]) -> Any:
        filters = _body_filter()
        count_matching(filters, action, limit=1)  # validates the filter (400) before anything is done
        queue = str(config.get("dashboard_queue") or "")
        if queue:
            job_id = queue_job("mrq_dashboard.tasks.BulkAction",
                               {"action": action, "filters": filters, "to_queue": request.args.get("to_queue", ""),
                                "reset_retries": request.args.get("reset_retries", "1") != "0"}, queue=queue)
            return ok({"action": action, "queued_job": job_id, "queue": queue}, 202)
        return ok({"action": action, "filter": filters, **run(filters)})

    @app.post("/api/jobs/cancel")
    def api_jobs_cancel() -> Any:
        return bulk("cancel", cancel_jobs)

    @app.post("/api/jobs/requeue")
    def api_jobs_requeue() -> Any:
        to_queue = request.args.get("to_queue") or None
        reset = request.args.get("reset_retries", "1") != "0"
        return bulk("requeue", lambda f: requeue_jobs(f, queue=to_queue, reset_retries=reset))

    @app.post("/api/queues/<path:name>/pause")
    def api_queue_pause(name: str) -> Any:
        Queue(name).pause()
        return ok({"queue": name, "paused": True})

    @app.post("/api/queues/<path:name>/resume")
    def api_queue_resume(name: str) -> Any:
        Queue(name).resume()
        return ok({"queue": name, "paused": False})

    _add_plugin_routes(app)
    return app
