"""mrq_dashboard.wsgi (for gunicorn), and the path prefix of a reverse proxy (X-Forwarded-Prefix)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import HERE, DashboardProcess

WSGI_CHECK = """
from werkzeug.test import Client
from mrq_dashboard.wsgi import app
client = Client(app)
response = client.get("/api/statuses", headers={"X-Forwarded-Prefix": "/mrq"})
print(response.status_code, response.get_json()["total"])
page = client.get("/jobs", headers={"X-Forwarded-Prefix": "/mrq"}).get_data(as_text=True)
print('data-root="/mrq"' in page, 'src="/mrq/static/dashboard.js"' in page)
"""


def test_the_wsgi_module_reads_the_environment(dashboard_urls, dash):
    env = dict(os.environ, MRQ_REDIS=dashboard_urls.redis, MRQ_MONGODB_JOBS=dashboard_urls.mongodb,
               MRQ_DASHBOARD_TRUST_PROXY="1")
    result = subprocess.run([sys.executable, "-c", WSGI_CHECK], cwd=str(HERE), env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "0", "True", "True"]


def test_pages_and_links_under_the_proxy_prefix(dashboard_urls, dash):
    server = DashboardProcess(dashboard_urls, ("--dashboard_trust_proxy",))
    try:
        page = server.get("/jobs", headers={"X-Forwarded-Prefix": "/mrq"}).text
        assert 'data-root="/mrq"' in page and 'href="/mrq/static/dashboard.css"' in page
        assert 'href="/mrq/queues"' in page and 'href="/mrq/api/openapi.json"' in page
        plain = server.get("/jobs").text                                   # no proxy header: no prefix
        assert 'data-root=""' in plain and 'href="/static/dashboard.css"' in plain
    finally:
        server.stop()
    untrusting = DashboardProcess(dashboard_urls)                           # the header is ignored by default
    try:
        assert 'data-root=""' in untrusting.get("/jobs", headers={"X-Forwarded-Prefix": "/evil"}).text
    finally:
        untrusting.stop()
