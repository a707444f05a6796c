"""Fixtures of the dashboard's tests: real ``mrq-dashboard`` processes, real workers, real Chromium.

One database per test module (the dashboard process of the module keeps pointing at it); each test starts
from empty collections and a flushed Redis (``dash`` fixture).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mrq.testing import ServerURLs, WorkerProcess

HERE = Path(__file__).parent
TASKS = "dashboard_tasks."
_numbers = itertools.count(1)


class Response:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class DashboardProcess:
    """A real ``mrq-dashboard`` subprocess on a free port."""

    def __init__(self, urls: ServerURLs, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 auth: str | None = None, cwd: Path | None = None) -> None:
        """``cwd``: run the ``mrq-dashboard`` console script there, as a user types it in a project's folder
        (``python -m`` would put the folder on the import path by itself)."""
        self.urls, self.args, self.auth = urls, args, auth
        full_env = dict(os.environ, MRQ_REDIS=urls.redis, MRQ_MONGODB_JOBS=urls.mongodb, PYTHONUNBUFFERED="1",
                        MRQ_DASHBOARD_CACHE_TTL="0")
        full_env.update(env or {})
        command = [str(Path(sys.executable).parent / "mrq-dashboard")] if cwd is not None else \
            [sys.executable, "-m", "mrq_dashboard.cli"]
        self.proc = subprocess.Popen([*command, "--dashboard_port", "0", *args],
                                     cwd=str(cwd or HERE), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        line = self.proc.stdout.readline()
        if not line.startswith("MRQ dashboard"):
            self.proc.wait(10)
            raise AssertionError(f"mrq-dashboard did not start ({self.proc.returncode}): {line}{''.join(self.stderr)}")
        self.url = line.split()[-1].rstrip("/")
        self._token: str | None = None

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                auth: str | None = "default", raw: bytes | None = None) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        credentials = self.auth if auth == "default" else auth
        if credentials:
            request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Response(response.status, response.headers, response.read())
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.headers, exc.read())

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def api(self, path: str, **kwargs: Any) -> Any:
        response = self.get("/api/" + path, **kwargs)
        assert response.status == 200, (path, response.status, response.text)
        return response.json()

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = self.api("config")["csrf_token"]
        return self._token

    def post(self, path: str, body: Any = None, token: str | None = "default", headers: dict[str, str] | None = None,
             **kwargs: Any) -> Response:
        sent = {"X-CSRF-Token": self.token if token == "default" else token} if token else {}
        return self.request("POST", path, body=body if body is not None else {}, headers={**sent, **(headers or {})},
                            **kwargs)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def dashboard_urls(mrq_redis_server: Any, mrq_mongodb_server: Any) -> Iterator[ServerURLs]:
    """Server URLs for one test module: the session servers, a database of the module's own."""
    import pymongo

    dbname = f"mrq_dash_{os.getpid()}_{next(_numbers)}"
    urls = ServerURLs(redis=mrq_redis_server.url, mongodb=mrq_mongodb_server.uri(dbname))
    yield urls
    client = pymongo.MongoClient(urls.mongodb)
    client.drop_database(dbname)
    client.close()


@pytest.fixture(scope="module")
def dashboard(dashboard_urls: ServerURLs) -> Iterator[DashboardProcess]:
    """An ``mrq-dashboard`` of the module (no auth, counts never cached)."""
    server = DashboardProcess(dashboard_urls)
    yield server
    server.stop()


@pytest.fixture
def dash(dashboard_urls: ServerURLs, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Empty collections, flushed Redis, and this process's MRQ context on the module's servers."""
    import redis
    from mrq.context import connections, setup_context

    redis.Redis.from_url(dashboard_urls.redis).flushdb()
    config = setup_context(redis=dashboard_urls.redis, mongodb_jobs=dashboard_urls.mongodb)
    db = connections.mongodb_jobs
    for name in ("mrq_jobs", "mrq_workers", "mrq_logs"):
        db[name].delete_many({})
    workers: list[WorkerProcess] = []

    def worker(*args: str, queues: tuple[str, ...] = ("default",), env: dict[str, str] | None = None,
               wait: bool = True) -> WorkerProcess:
        process = WorkerProcess(dashboard_urls, str(HERE), env=env)
        workers.append(process)
        return process.start(*args, queues=queues, wait=wait)

    config.worker = worker  # type: ignore[attr-defined]
    try:
        yield config
    finally:
        for process in workers:
            process.kill()
        connections.reset()


# ------------------------------------------------------------------ the browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's chromium + chromium-driver) driven by selenium."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Browser tests need Debian's chromium and chromium-driver: apt-get install -y chromium "
                    "chromium-driver (.ci/run installs them)")
    pytest.importorskip("selenium", reason="pip install -e 'plugins/mrq_dashboard[test]' (selenium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mrq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

