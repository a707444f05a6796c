"""Auth on every route (static files too), read-only mode, and the refusal to serve a public address
without auth; on real ``mrq-dashboard`` processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import HERE, TASKS, DashboardProcess
from mrq.job import Job, queue_job
from mrq.queue import Queue

from mrq_dashboard.security import check_listen_address, is_loopback

ROUTES = ["/", "/jobs", "/queues", "/api/config", "/api/jobs", "/api/statuses", "/api/openapi.json",
          "/static/dashboard.js", "/static/dashboard.css", "/static/favicon.svg", "/nothing"]


@pytest.fixture(scope="module")
def protected(dashboard_urls):
    server = DashboardProcess(dashboard_urls, ("--dashboard_httpauth", "admin:s3cret"), auth="admin:s3cret")
    yield server
    server.stop()


def test_every_route_needs_auth(protected, dash):
    for path in ROUTES:
        for credentials in (None, "admin:wrong", "other:s3cret", "admin"):
            response = protected.get(path, auth=credentials)
            assert response.status == 401, (path, credentials)
            assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert protected.get(path).status == (404 if path == "/nothing" else 200), path
    broken = protected.get("/api/config", auth=None, headers={"Authorization": "Basic %%%"})
    assert broken.status == 401


def test_auth_does_not_replace_the_csrf_token(protected, dash):
    job = queue_job(TASKS + "Add", {"a": 1, "b": 1})
    assert protected.post(f"/api/jobs/{job}/cancel", token=None).status == 403
    assert protected.post(f"/api/jobs/{job}/cancel", auth=None).status == 401
    assert protected.post(f"/api/jobs/{job}/cancel").json()["cancelled"] is True


def test_read_only_refuses_every_post_and_hides_the_buttons(dashboard_urls, dash):
    server = DashboardProcess(dashboard_urls, ("--dashboard_readonly",))
    try:
        job = queue_job(TASKS + "Add", {"a": 1, "b": 1})
        assert server.api("config")["readonly"] is True
        for path in (f"/api/jobs/{job}/cancel", f"/api/jobs/{job}/requeue", "/api/jobs/cancel",
                     "/api/jobs/requeue", "/api/queues/default/pause", "/api/queues/default/resume"):
            response = server.post(path, {})
            assert response.status == 403 and "read-only" in response.json()["error"], path
        assert Job(job).fetch().status == "queued" and not Queue("default").is_paused()
        assert 'data-readonly="true"' in server.get("/jobs").text
        assert server.api("jobs")["jobs"][0]["id"] == str(job)             # reads still work
    finally:
        server.stop()


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrq_dashboard.cli", *args], cwd=str(HERE), env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_public_address_needs_auth_or_an_explicit_option(dashboard_urls, dash):
    env = dict(os.environ, MRQ_REDIS=dashboard_urls.redis, MRQ_MONGODB_JOBS=dashboard_urls.mongodb)
    refused = _run("--dashboard_ip", "0.0.0.0", "--dashboard_port", "0", env=env)
    assert refused.returncode == 2
    assert "without authentication" in refused.stderr and "--dashboard_httpauth" in refused.stderr
    for extra in (("--dashboard_httpauth", "a:b"), ("--dashboard_allow_public",)):
        server = DashboardProcess(dashboard_urls, ("--dashboard_ip", "0.0.0.0", *extra))
        try:
            assert server.url.startswith("http://0.0.0.0:")
        finally:
            server.stop()


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.1.2.3")
    assert check_listen_address("127.0.0.1", "", False) is None
    assert check_listen_address("0.0.0.0", "u:p", False) is None
    assert check_listen_address("0.0.0.0", "", True) is None
    assert "Refusing" in check_listen_address("0.0.0.0", "", False)


def test_every_action_is_logged_with_who_what_and_the_outcome(protected, dash):
    """The dashboard's audit trail: each POST is logged (logger mrq.dashboard, INFO) with the user, the route,
    the filter and the HTTP status, refused ones included."""
    import time

    seen = len(protected.stderr)  # the server is shared by the module's tests
    job = queue_job(TASKS + "Add", {"a": 1, "b": 1})
    assert protected.post(f"/api/jobs/{job}/cancel").status == 200
    assert protected.post("/api/jobs/requeue", body={"queue": "default", "status": "cancel"}).status == 200
    assert protected.post(f"/api/jobs/{job}/cancel", token="wrong").status == 403
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum("Dashboard action" in line for line in protected.stderr[seen:]) < 3:
        time.sleep(0.05)
    lines = [line for line in protected.stderr[seen:] if "Dashboard action" in line]
    assert len(lines) == 3, lines
    assert f"POST /api/jobs/{job}/cancel" in lines[0] and "by admin from 127.0.0.1 -> 200" in lines[0]
    assert '{"queue": "default", "status": "cancel"}' in lines[1] and "by admin" in lines[1]
    assert lines[2].rstrip().endswith("-> 403")
