"""The Host check (mrq_dashboard.hosts, --dashboard_allowed_hosts): the defence against DNS rebinding.

Matching rules in-process; on real ``mrq-dashboard`` processes: a foreign Host gets a 400 on every route
(API, actions, pages, static files) before auth; loopback names and IP addresses are answered; configured
names, ``*``, the README's ``mrq-config.py`` example; refusals logged; bad values refused at start.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HERE, TASKS, DashboardProcess
from mrq.job import Job, queue_job

from mrq_dashboard.hosts import AllowedHosts, host_name, normalize_host_entry

README = HERE.parent / "README.md"
MACHINE = socket.gethostname().lower()
MACHINE_IS_LOOPBACK = MACHINE == "localhost" or MACHINE.endswith(".localhost")
FOREIGN = ["evil.example", "evil.example:5555", "attacker.localhost.evil.com", "localhost.evil.com",
           "127.0.0.1.evil.com", "evillocalhost", "a b", "evil.example, localhost", "localhost:x", "::1"]


def _port(server: DashboardProcess) -> str:
    return server.url.rsplit(":", 1)[1]


# ------------------------------------------------------------------ the rules
def test_defaults_answer_loopback_names_and_ip_addresses_only():
    hosts = AllowedHosts()
    for header in ("localhost", "localhost:5555", "LocalHost.:5555", "app.localhost:80", "127.0.0.1:5555",
                   "127.0.0.2", "[::1]:5555", "[::1]", "10.1.2.3:5555", "", None):
        assert hosts.allows(header), header
    for header in FOREIGN + ([] if MACHINE_IS_LOOPBACK else [MACHINE]):
        assert not hosts.allows(header), header


def test_names_domains_star_and_the_listening_address():
    hosts = AllowedHosts(["MRQ.example.com.", ".corp.example", "10.0.0.1"], listen_ip="dash.internal")
    for header in ("mrq.example.com:443", "mrq.example.com.", "corp.example", "a.b.corp.example:8080",
                   "dash.internal:5555", "localhost"):
        assert hosts.allows(header), header
    for header in ("example.com", "x.mrq.example.com", "evilcorp.example", "corp.example.evil", "evil.example"):
        assert not hosts.allows(header), header
    everywhere = AllowedHosts([], listen_ip="0.0.0.0")              # the machine's own names
    assert everywhere.allows(socket.gethostname()) and not everywhere.allows("evil.example")
    assert AllowedHosts([], listen_ip="::").allows(socket.gethostname().upper() + ":5555")
    assert MACHINE_IS_LOOPBACK or not AllowedHosts([], listen_ip="127.0.0.1").allows(MACHINE)
    star = AllowedHosts(["*"])
    assert all(star.allows(header) for header in FOREIGN) and str(star) == "* (no check)"
    assert host_name("[::1]:80") == "::1" and host_name("Evil.Example.:80") == "evil.example"
    assert host_name("a b") is None and host_name("[zz]") is None


@pytest.mark.parametrize("entry, words", [
    ("http://mrq.example.com", "not a host name"), ("*.example.com", "write '.example.com'"),
    ("mrq.example.com:8080", "write 'mrq.example.com'"), ("mrq..example.com", "not a host name"),
    (".", "not a host name"), ("a@b", "not a host name")])
def test_bad_entries_say_what_to_write(entry, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        normalize_host_entry(entry)


def test_entries_are_normalized():
    assert normalize_host_entry("[::1]") == normalize_host_entry("::1") == "::1"
    assert normalize_host_entry(" Bücher.Example. ") == "xn--bcher-kva.example"
    assert normalize_host_entry(".Example.com") == ".example.com" and normalize_host_entry("*") == "*"


# ------------------------------------------------------------------ on a real dashboard (default settings)
def test_a_foreign_host_gets_400_on_every_route(dashboard, dash):
    job = queue_job(TASKS + "Add", {"a": 1, "b": 1})
    token = dashboard.token                                                # read with an allowed Host
    for host in ("evil.example", f"evil.example:{_port(dashboard)}", "attacker.localhost.evil.com"):
        headers = {"Host": host}
        config = dashboard.get("/api/config", headers=headers)
        assert config.status == 400 and "csrf_token" not in config.text, host
        error = config.json()["error"]
        assert "is not allowed" in error and "--dashboard_allowed_hosts" in error and "DNS rebinding" in error
        assert config.headers["Cache-Control"] == "no-store"
        action = dashboard.post(f"/api/jobs/{job}/cancel", token=token, headers=headers)
        assert action.status == 400 and "--dashboard_allowed_hosts" in action.json()["error"]
        for path in ("/", "/jobs", "/static/dashboard.js", "/static/favicon.svg", "/nothing"):
            page = dashboard.get(path, headers=headers)
            assert page.status == 400, (host, path)
            assert page.headers["Content-Type"].startswith("text/plain") and "--dashboard_allowed_hosts" in page.text
            assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert Job(job).fetch().status == "queued"


def test_loopback_names_and_addresses_are_answered(dashboard, dash):
    port = _port(dashboard)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost", f"dash.localhost:{port}"):
        assert dashboard.get("/api/config", headers={"Host": host}).status == 200, host
        assert dashboard.get("/static/dashboard.js", headers={"Host": host}).status == 200, host
    job = queue_job(TASKS + "Add", {"a": 1, "b": 1})
    assert dashboard.post(f"/api/jobs/{job}/cancel", headers={"Host": f"localhost:{port}"}).status == 200


def _lines(server: DashboardProcess, seen: int, text: str, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(text in line for line in server.stderr[seen:]) < count:
        time.sleep(0.05)
    return [line for line in server.stderr[seen:] if text in line]


def test_refusals_are_logged_once_a_minute_per_host_and_refused_actions_audited(dashboard, dash):
    seen = len(dashboard.stderr)
    for _ in range(3):
        assert dashboard.get("/api/statuses", headers={"Host": "rebind.example:1"}).status == 400
    assert dashboard.post("/api/queues/default/pause", headers={"Host": "rebind.example"}).status == 400
    warnings = _lines(dashboard, seen, "Host 'rebind.example", 1)
    assert len(warnings) == 1, warnings
    assert "refused GET /api/statuses from 127.0.0.1" in warnings[0] and "--dashboard_allowed_hosts" in warnings[0]
    audit = _lines(dashboard, seen, "Dashboard action", 1)
    assert len(audit) == 1 and "POST /api/queues/default/pause" in audit[0] and audit[0].rstrip().endswith("-> 400")


# ------------------------------------------------------------------ configured
def _readme_config() -> str:
    block = re.search(r"```python\n(# mrq-config\.py.*?)```", README.read_text(), re.S)
    assert block, "the DASHBOARD_ALLOWED_HOSTS example is missing from the README"
    return block.group(1)


def test_the_readme_example_answers_its_names_before_asking_for_auth(dashboard_urls, dash, tmp_path: Path):
    config = tmp_path / "mrq-config.py"
    config.write_text(_readme_config())
    server = DashboardProcess(dashboard_urls, ("--config", str(config), "--dashboard_httpauth", "admin:s3cret"),
                              auth="admin:s3cret")
    try:
        for host in ("mrq.example.com", "mrq.example.com:443", "corp.example", "build-7.corp.example:5555",
                     f"localhost:{_port(server)}"):
            assert server.get("/api/config", headers={"Host": host}).status == 200, host
            assert server.get("/api/config", headers={"Host": host}, auth=None).status == 401, host
        for host in ("evil.example", "mrq.example.com.evil.example", "corpexample"):
            assert server.get("/api/config", headers={"Host": host}, auth=None).status == 400, host  # not 401
        assert "answering the Host names localhost, mrq.example.com, .corp.example" in "".join(server.stderr)
    finally:
        server.stop()


def test_star_turns_the_check_off(dashboard_urls, dash):
    server = DashboardProcess(dashboard_urls, env={"MRQ_DASHBOARD_ALLOWED_HOSTS": "*"})
    try:
        for host in ("evil.example", "attacker.localhost.evil.com"):
            assert server.get("/api/config", headers={"Host": host}).status == 200
    finally:
        server.stop()


WSGI_CHECK = """
from werkzeug.test import Client
from mrq_dashboard.wsgi import app
client = Client(app)
for headers in ({"Host": "localhost"}, {"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example"},
                {"X-Forwarded-Host": "mrq.example.com", "Host": "127.0.0.1:5555"}):
    print(client.get("/api/statuses", headers=headers).status_code)
"""


@pytest.mark.parametrize("trust, expected", [("1", ["200", "400", "400", "200"]),
                                             ("0", ["200", "400", "200", "200"])])
def test_behind_a_proxy_the_forwarded_host_is_checked(dashboard_urls, dash, trust, expected):
    env = dict(os.environ, MRQ_REDIS=dashboard_urls.redis, MRQ_MONGODB_JOBS=dashboard_urls.mongodb,
               MRQ_DASHBOARD_TRUST_PROXY=trust, MRQ_DASHBOARD_ALLOWED_HOSTS="mrq.example.com")
    result = subprocess.run([sys.executable, "-c", WSGI_CHECK], cwd=str(HERE), env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected


@pytest.mark.parametrize("args, env, words", [
    (["--dashboard_allowed_hosts", "http://mrq.example.com"], {}, "is a URL or a path"),
    (["--dashboard_allowed_hosts", "*.example.com"], {}, "write '.example.com'"),
    ([], {"MRQ_DASHBOARD_ALLOWED_HOSTS": "localhost,mrq.example.com:8080"}, "MRQ_DASHBOARD_ALLOWED_HOSTS")])
def test_a_bad_value_stops_with_one_error_line(dashboard_urls, dash, args, env, words):
    full_env = dict(os.environ, MRQ_REDIS=dashboard_urls.redis, MRQ_MONGODB_JOBS=dashboard_urls.mongodb, **env)
    result = subprocess.run([sys.executable, "-m", "mrq_dashboard.cli", "--dashboard_port", "0", *args],
                            cwd=str(HERE), env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrq-dashboard: error: Bad value for option "
                                                   "'dashboard_allowed_hosts'"), result.stderr
    assert words in lines[0] and not result.stdout
