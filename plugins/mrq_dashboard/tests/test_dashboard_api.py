"""The JSON API on a real ``mrq-dashboard`` process, real servers and real workers: every route, filter and
error."""

from __future__ import annotations

import datetime
import json
import signal
import time
from urllib.parse import quote, urlencode

import pytest
from bson import ObjectId
from conftest import TASKS
from mrq.context import connections, get_broker, set_current_config
from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import Queue
from mrq.testing import wait_until

from mrq_dashboard.app import create_app
from mrq_dashboard.cli import load_config
from mrq_dashboard.openapi import ROUTES


def _run_some_jobs(dash, tmp_path):
    """5 successes on default, 2 failures (FileNotFoundError) on other, 1 queued on crawl/a (not run)."""
    ok = queue_jobs(TASKS + "Add", [{"a": i, "b": 1} for i in range(5)])
    failed = queue_jobs(TASKS + "NeedsFile", [{"path": str(tmp_path / f"missing{i}")} for i in range(2)],
                        queue="other")
    waiting = queue_job(TASKS + "Add", {"a": 100, "b": 1}, queue="crawl/a")
    worker = dash.worker("--greenlets", "4", queues=("default", "other"))
    wait_until(lambda: (worker.report().get("counters") or {}).get("done") == 7, what="a report after the jobs")
    return ok, failed, waiting, worker


def test_config_and_security_headers(dashboard, dash):
    response = dashboard.get("/api/config")
    assert response.status == 200
    data = response.json()
    assert len(data["csrf_token"]) > 20 and data["readonly"] is False
    assert data["status_groups"]["failing"] == ["failed", "maxretries", "timeout", "abort", "maxworkerdeaths"]
    for path in ("/api/config", "/", "/static/dashboard.js"):
        headers = dashboard.get(path).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"


def test_pages_are_served(dashboard, dash):
    job = queue_job(TASKS + "Add", {"a": 1, "b": 2})
    for path in ("/", "/statuses", "/queues", "/workers", "/jobs", "/taskpaths", "/exceptions", "/plugins",
                 f"/jobs/{job}", "/static/dashboard.js", "/static/chart.js", "/static/dashboard.css"):
        response = dashboard.get(path)
        assert response.status == 200, path
    html = dashboard.get("/jobs").text
    assert '<script src="/static/dashboard.js" defer></script>' in html
    assert "<script>" not in html                                   # no inline script anywhere
    assert dashboard.get("/p/nothing").status == 404
    assert dashboard.get("/api/nothing").json()["error"].startswith("404")


def test_counts_pages(dashboard, dash, tmp_path):
    ok, failed, waiting, _ = _run_some_jobs(dash, tmp_path)
    statuses = dashboard.api("statuses")
    assert {r["status"]: r["count"] for r in statuses["statuses"]} == {"queued": 1, "success": 5, "failed": 2}
    assert statuses["queues"] == {"default": {"success": 5}, "other": {"failed": 2}, "crawl/a": {"queued": 1}}
    assert statuses["total"] == 8 and statuses["counts"]["age"] >= 0

    queues = {q["name"]: q for q in dashboard.api("queues")["queues"]}
    assert queues["crawl/a"]["size"] == 1 and queues["crawl/a"]["counts"] == {"queued": 1}
    assert queues["default"]["size"] == 0 and queues["default"]["jobs_per_second"] > 0
    assert queues["crawl/a"]["eta_seconds"] is None                 # nobody serves it
    assert dashboard.api("queues?limit=1")["more"] is True

    paths = {r["path"]: r for r in dashboard.api("taskpaths")["taskpaths"]}
    assert paths[TASKS + "Add"]["total"] == 6 and paths[TASKS + "NeedsFile"]["counts"] == {"failed": 2}

    exceptions = dashboard.api("exceptions")["exceptions"]
    assert [(e["path"], e["exceptiontype"], e["count"]) for e in exceptions] == [
        (TASKS + "NeedsFile", "FileNotFoundError", 2)]
    assert isinstance(exceptions[0]["last"], str) and exceptions[0]["last"].endswith("Z")


def test_workers_and_overview(dashboard, dash, tmp_path):
    _, _, _, worker = _run_some_jobs(dash, tmp_path)
    workers = dashboard.api("workers")["workers"]
    assert len(workers) == 1
    w = workers[0]
    assert (w["pid"], w["alive"], w["dead"], w["queues"], w["done"]) == (worker.pid, True, False,
                                                                          ["default", "other"], 7)
    assert w["rss_mb"] > 0 and any(w["history"]["rss"]) and isinstance(w["id"], str)
    # One point per report (every second here), from the oldest sample: at least 10 points, at most RECENT.
    assert 10 <= len(w["history"]["rss"]) <= 90 and w["history"]["step"] == 1, w["history"]
    overview = dashboard.api("overview")
    assert overview["workers_alive"] == 1 and overview["greenlets"] == 4 and overview["queued"] == 1
    assert overview["failing"] == 2 and overview["total"] == 8 and overview["jobs_per_second"] > 0
    assert sum(overview["history"]["done"]["success"]) == 5 and len(overview["history"]["total"]) == 60

    worker.proc.send_signal(signal.SIGKILL)                          # dead: no heartbeat any more
    wait_until(lambda: dashboard.api("workers")["workers"][0]["dead"], timeout=10, what="worker flagged dead")
    assert dashboard.api("overview")["workers_dead"] == 1


def test_running_job_shows_its_stack(dashboard, dash):
    job = queue_job(TASKS + "Chatty", {"lines": 50, "every": 0.1})
    dash.worker()
    wait_until(lambda: dashboard.api(f"jobs/{job}").get("stack"), what="stack reported")
    data = dashboard.api(f"jobs/{job}")
    assert data["status"] == "started" and any("dashboard_tasks.py" in line for line in data["stack"])
    running = dashboard.api("workers")["workers"][0]["jobs"]
    assert [j["id"] for j in running] == [str(job)] and running[0]["stack"]
    assert dashboard.post(f"/api/jobs/{job}/cancel").json()["cancelled"] is True


def test_jobs_filters(dashboard, dash, tmp_path):
    ok, failed, waiting, worker = _run_some_jobs(dash, tmp_path)
    sub = queue_job(TASKS + "Add", {"a": 7, "b": 1, "tag": "x"}, queue="crawl/b")

    def ids(**filters):
        data = dashboard.api("jobs?" + urlencode(filters))
        return [j["id"] for j in data["jobs"]]

    newest_first = [str(i) for i in sorted(ok + failed + [waiting, sub], reverse=True)]
    assert ids() == newest_first
    assert ids(queue="other") == [str(i) for i in reversed(failed)]
    assert set(ids(queue="crawl/")) == {str(waiting), str(sub)}          # prefix = every subqueue
    assert ids(queue="crawl/a,other") == [str(waiting)] + [str(i) for i in reversed(failed)]
    assert ids(path=TASKS + "NeedsFile") == [str(i) for i in reversed(failed)]
    assert len(ids(path="dashboard_tasks.*")) == 9                      # wildcard prefix
    assert len(ids(status="success")) == 5 and ids(status="failing") == [str(i) for i in reversed(failed)]
    assert set(ids(status="failed,queued")) == {str(i) for i in failed + [waiting, sub]}
    assert len(ids(worker=str(worker.report()["_id"]))) == 7
    assert ids(exceptiontype="FileNotFoundError") == [str(i) for i in reversed(failed)]
    assert ids(id=str(ok[2])) == [str(ok[2])]
    assert ids(id=f"{ok[0]},{ok[1]}") == [str(ok[1]), str(ok[0])]
    assert ids(params=json.dumps({"a": 7, "tag": "x"})) == [str(sub)]
    assert ids(params=json.dumps({"a": 7}), queue="crawl/b", status="queued") == [str(sub)]
    future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
    assert ids(after=future) == [] and len(ids(before=future)) == 9

    page1 = dashboard.api("jobs?limit=4")
    assert [j["id"] for j in page1["jobs"]] == newest_first[:4] and page1["more"] is True
    page2 = dashboard.api("jobs?limit=4&skip=4")
    assert [j["id"] for j in page2["jobs"]] == newest_first[4:8]
    by_cursor = dashboard.api(f"jobs?limit=4&cursor={page1['next_before']}")
    assert [j["id"] for j in by_cursor["jobs"]] == newest_first[4:8]
    last = dashboard.api("jobs?limit=4&skip=8")
    assert len(last["jobs"]) == 1 and last["more"] is False and last["next_before"] is None

    row = dashboard.api(f"jobs?id={ok[0]}")["jobs"][0]
    assert row["params"] == '{"a": 0, "b": 1}' and row["status"] == "success" and row["queue"] == "default"
    assert row["datequeued"].endswith("Z") and isinstance(row["worker"], str) and "result" not in row


def test_a_bad_status_s_400_lists_the_statuses_and_the_status_groups(dashboard, dash):
    for path in ("/api/jobs?status=finished", "/api/jobs/count?action=cancel&status=failing,finished"):
        response = dashboard.get(path)
        assert response.status == 400, response.text
        error = response.json()["error"]
        assert error.startswith("Unknown status 'finished': use a status (") and "failed" in error, error
        assert "or a group: waiting (queued, retry, interrupt); running (started); failing (failed," in error, error
    assert dashboard.get("/api/jobs?status=failing").status == 200


@pytest.mark.parametrize("query, message", [
    ("id=nope", "not an id"),
    ("worker=nope", "not an id"),
    ("params=%7Bnot-json", "not valid JSON"),
    ("params=" + quote('{"$where": "sleep(100)"}'), "starts with '$'"),
    ("params=" + quote('{"user": {"$gt": ""}}'), "is a dict"),
    ("params=" + quote('["a"]'), "must be an object"),
    ("status=finished", "Unknown status"),
    ("path=" + quote("$where"), "starts with '$'"),
    ("limit=100000", "out of range"),
    ("limit=0", "out of range"),
    ("limit=ten", "not an integer"),
    ("skip=-1", "out of range"),
    ("cursor=xyz", "not a cursor"),
    ("after=yesterday", "not an ISO date"),
])
def test_jobs_bad_arguments_are_400(dashboard, dash, query, message):
    response = dashboard.get("/api/jobs?" + query)
    assert response.status == 400, response.text
    assert message in response.json()["error"]
    assert "Traceback" not in response.text


def test_job_document_and_logs(dashboard, dash, tmp_path):
    ok, failed, _, _ = _run_some_jobs(dash, tmp_path)
    done = dashboard.api(f"jobs/{ok[3]}")
    assert (done["id"], done["result"], done["status"]) == (str(ok[3]), 4, "success")
    assert done["command"] == f"mrq-run {TASKS}Add '{{\"a\": 3, \"b\": 1}}'"
    fail = dashboard.api(f"jobs/{failed[0]}")
    assert "FileNotFoundError" in fail["traceback"] and fail["exceptiontype"] == "FileNotFoundError"
    assert [h["status"] for h in fail["traceback_history"]] == ["failed"]
    assert fail["traceback_history"][0]["date"].endswith("Z")
    assert dashboard.get(f"/api/jobs/{ObjectId()}").status == 404
    assert dashboard.get("/api/jobs/123").status == 400

    logs = dashboard.api(f"jobs/{ok[3]}/logs")
    assert "adding 3 and 1" in logs["text"] and logs["cursor"]
    again = dashboard.api(f"jobs/{ok[3]}/logs?cursor={logs['cursor']}")
    assert again["logs"] == [] and again["cursor"] == logs["cursor"]      # nothing new after the cursor
    connections.mongodb_logs["mrq_logs"].insert_one({"job": ok[3], "logs": "one more line", "date": None})
    assert dashboard.api(f"jobs/{ok[3]}/logs?cursor={logs['cursor']}")["text"] == "one more line"
    assert dashboard.get(f"/api/jobs/{ok[3]}/logs?cursor=bad").status == 400


def test_single_job_actions(dashboard, dash, tmp_path):
    queued = queue_job(TASKS + "Add", {"a": 1, "b": 1})
    response = dashboard.post(f"/api/jobs/{queued}/cancel")
    assert response.status == 200 and response.json() == {"id": str(queued), "cancelled": True}
    assert Job(queued).fetch().status == "cancel"
    assert dashboard.post(f"/api/jobs/{queued}/cancel").json()["cancelled"] is False   # already final
    assert dashboard.post(f"/api/jobs/{queued}/requeue").json()["requeued"] is True
    assert Job(queued).fetch().status == "queued" and get_broker().list_ids("default") == [str(queued)]
    assert dashboard.post(f"/api/jobs/{ObjectId()}/requeue").status == 404
    assert dashboard.post("/api/jobs/zzz/cancel").status == 400
    assert dashboard.post(f"/api/jobs/{queued}/cancel").json()["cancelled"] is True
    for bad in ("two%20words", "a,b", "x_raw"):  # a queue no worker could listen on, or a raw one: refused
        for path in (f"/api/jobs/{queued}/requeue?to_queue={bad}", f"/api/jobs/requeue?to_queue={bad}"):
            response = dashboard.post(path, {} if "/jobs/requeue" in path else None)
            assert response.status == 400 and "queue" in response.json()["error"].lower(), (path, response.text)
    assert Job(queued).fetch().status == "cancel" and get_broker().known_queues() == ["default"]
    assert dashboard.post(f"/api/jobs/{queued}/requeue").json()["requeued"] is True

    running = queue_job(TASKS + "Chatty", {"lines": 100, "every": 0.1}, queue="slow")
    dash.worker(queues=("slow",))
    wait_until(lambda: Job(running).fetch().status == "started", what="started")
    conflict = dashboard.post(f"/api/jobs/{running}/requeue")
    assert conflict.status == 409 and "cancel it first" in conflict.json()["error"]
    assert dashboard.post(f"/api/jobs/{running}/cancel").json()["cancelled"] is True


def test_cancelled_jobs_no_longer_count_as_waiting(dashboard, dash):
    """Queues page and Overview: a bulk cancel of the 3 jobs of a queue leaves it at 0 waiting (it showed 3 until a
    worker popped and skipped the ids); a single cancel from the dashboard likewise, a delayed job's id too."""
    queue_jobs(TASKS + "Add", [{"a": i, "b": 0} for i in range(3)], queue="bulkc")
    kept = queue_jobs(TASKS + "Add", [{"a": i, "b": 0} for i in range(2)], queue="keepc")
    one = queue_job(TASKS + "Add", {"a": 9, "b": 9}, queue="onec")
    later = queue_job(TASKS + "Add", {"a": 8, "b": 8}, queue="onec", delay=3600)

    def sizes() -> dict[str, tuple[int, int]]:
        return {q["name"]: (q["size"], q["delayed"]) for q in dashboard.api("queues")["queues"]}

    assert sizes()["bulkc"] == (3, 0) and dashboard.api("overview")["queued"] == 6
    assert dashboard.post("/api/jobs/cancel", {"queue": "bulkc"}).json()["cancelled"] == 3
    assert dashboard.post(f"/api/jobs/{one}/cancel").json()["cancelled"] is True
    assert dashboard.post(f"/api/jobs/{later}/cancel").json()["cancelled"] is True
    assert sizes().get("bulkc", (0, 0)) == (0, 0) and sizes().get("onec", (0, 0)) == (0, 0)
    assert sizes()["keepc"] == (2, 0) and sorted(get_broker().list_ids("keepc")) == sorted(map(str, kept))
    overview = dashboard.api("overview")
    assert (overview["queued"], overview["delayed"]) == (2, 0)


def test_bulk_actions_by_filter(dashboard, dash, tmp_path):
    ids = queue_jobs(TASKS + "Add", [{"a": i, "b": 0} for i in range(6)], queue="bulk")
    queue_jobs(TASKS + "Add", [{"a": i, "b": 0} for i in range(3)], queue="keep")
    count = dashboard.api("jobs/count?action=cancel&queue=bulk")
    assert count["count"] == 6
    assert dashboard.api("jobs/count?action=requeue&queue=bulk")["count"] == 0
    done = dashboard.post("/api/jobs/cancel", {"queue": "bulk"}).json()
    assert (done["matched"], done["cancelled"], done["stopped"]) == (6, 6, 0)
    assert {Job(i).fetch().status for i in ids} == {"cancel"} and Queue("keep").size() == 3
    assert dashboard.api("jobs/count?action=requeue&queue=bulk")["count"] == 6
    done = dashboard.post("/api/jobs/requeue?to_queue=moved", {"queue": "bulk", "status": ["cancel"]}).json()
    assert (done["matched"], done["requeued"], done["running"]) == (6, 6, 0)
    assert sorted(get_broker().list_ids("moved")) == sorted(str(i) for i in ids)
    assert Queue("bulk").size() == 0                                   # not left in the old list

    for body, message in ((b"{oops", "not valid JSON"), (b"[1]", "must be a JSON object"),
                          (json.dumps({"params": {"$where": "1"}}).encode(), "starts with '$'"),
                          (json.dumps({"colour": "red"}).encode(), "Unknown job filter"),
                          (json.dumps({"queue": {"$ne": "x"}}).encode(), "is a dict")):
        response = dashboard.request("POST", "/api/jobs/cancel", raw=body,
                                     headers={"X-CSRF-Token": dashboard.token})
        assert response.status == 400 and message in response.json()["error"], (body, response.text)
    assert {Job(i).fetch().status for i in ids} == {"queued"}           # nothing done by a refused filter


def test_every_post_needs_the_csrf_token(dashboard, dash):
    job = queue_job(TASKS + "Add", {"a": 1, "b": 1})
    for path in (f"/api/jobs/{job}/cancel", f"/api/jobs/{job}/requeue", "/api/jobs/cancel", "/api/jobs/requeue",
                 "/api/queues/default/pause", "/api/queues/default/resume"):
        for token in (None, "wrong"):
            response = dashboard.post(path, {}, token=token)
            assert response.status == 403 and "X-CSRF-Token" in response.json()["error"], path
    assert Job(job).fetch().status == "queued" and not Queue("default").is_paused()


def test_pause_and_resume(dashboard, dash):
    assert dashboard.post("/api/queues/default/pause").json() == {"queue": "default", "paused": True}
    assert Queue("default").is_paused()
    queue_job(TASKS + "Add", {"a": 1, "b": 1})
    assert {q["name"]: q["paused"] for q in dashboard.api("queues")["queues"]} == {"default": True}
    assert dashboard.post("/api/queues/crawl%2F/pause").json()["queue"] == "crawl/"   # a root of subqueues
    assert Queue("crawl/x").is_paused()
    assert dashboard.post("/api/queues/default/resume").json()["paused"] is False
    assert not Queue("default").is_paused()
    assert dashboard.post("/api/queues/a%20b/pause").status == 400


def test_ids_and_dates_are_strings(dashboard, dash, tmp_path):
    _run_some_jobs(dash, tmp_path)
    text = json.dumps([dashboard.api(p) for p in ("overview", "workers", "jobs", "exceptions")])
    assert "$oid" not in text and "$date" not in text and "ObjectId(" not in text


def test_plugins_and_openapi(dashboard, dash):
    plugins = {p["name"]: p for p in dashboard.api("plugins")["plugins"]}
    assert plugins["dashboard"]["enabled"] and "mrq_add_hookspecs" in plugins["dashboard"]["hooks"]
    assert plugins["dashboard"]["version"] == "1.0.0"
    spec = dashboard.api("openapi.json")
    assert spec["openapi"].startswith("3.")
    # Every API route of the application is described, and nothing else. create_app needs MRQ's context set up
    # with the dashboard's configuration (its plugin enabled: its hooks, mrq_dashboard_routes included), as
    # mrq-dashboard and mrq_dashboard.wsgi do.
    config = load_config(["--redis", dash["redis"], "--mongodb_jobs", dash["mongodb_jobs"],
                          "--dashboard_cache_ttl", "0"])
    set_current_config(config)
    app = create_app(config)
    served = {(m.lower(), _openapi_path(r.rule)) for r in app.url_map.iter_rules() if r.rule.startswith("/api/")
              for m in r.methods - {"HEAD", "OPTIONS"}}
    assert served == {(m, p) for m, p, *_ in ROUTES}
    assert {(m, p) for p, ops in spec["paths"].items() for m in ops} == served


def _openapi_path(rule: str) -> str:
    return rule.replace("<job_id>", "{job_id}").replace("<path:name>", "{name}").replace("<name>", "{name}")


def test_bulk_action_on_a_worker_with_dashboard_queue(dashboard_urls, dash):
    from conftest import DashboardProcess

    server = DashboardProcess(dashboard_urls, ("--dashboard_queue", "admin"))
    try:
        ids = queue_jobs(TASKS + "Add", [{"a": i, "b": 0} for i in range(3)], queue="late")
        response = server.post("/api/jobs/cancel", {"queue": "late"})
        assert response.status == 202 and response.json()["queue"] == "admin"
        assert {Job(i).fetch().status for i in ids} == {"queued"}      # not yet: a worker runs it
        dash.worker(queues=("admin",))
        wait_until(lambda: {Job(i).fetch().status for i in ids} == {"cancel"}, what="cancelled by the worker")
        action = Job(response.json()["queued_job"])
        wait_until(lambda: action.fetch().status == "success", what="the bulk action job done")
        assert action.data["result"]["cancelled"] == 3
    finally:
        server.stop()


def test_counts_are_cached_and_shared(dashboard_urls, dash):
    from conftest import DashboardProcess

    server = DashboardProcess(dashboard_urls, env={"MRQ_DASHBOARD_CACHE_TTL": "30"})
    try:
        queue_job(TASKS + "Add", {"a": 1, "b": 1})
        first = server.api("statuses")
        assert first["total"] == 1
        queue_job(TASKS + "Add", {"a": 2, "b": 1})
        time.sleep(0.2)
        cached = server.api("statuses")
        assert cached["total"] == 1 and cached["counts"]["computed_at"] == first["counts"]["computed_at"]
        assert server.api("taskpaths")["counts"]["computed_at"] == first["counts"]["computed_at"]  # one $group
        assert len(server.api("jobs")["jobs"]) == 2                    # lists are live
    finally:
        server.stop()
