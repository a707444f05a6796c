"""pytest plugin for testing MRQ and MRQ tasks (registered as the ``mrq`` pytest11 entry point).

Servers
    ``mrq_redis_server`` / ``mrq_mongodb_server`` (session): a Redis and a MongoDB-compatible server
    (SecantusDB) started on free ports for the whole session. Set ``MRQ_TEST_REDIS_URI`` /
    ``MRQ_TEST_MONGODB_URI`` to use existing servers instead (those cannot be stopped or restarted;
    tests that try are skipped). Note that with ``MRQ_TEST_REDIS_URI`` the database in the URL is
    flushed before every test that uses ``mrq_urls``.

    ``mrq_urls`` (function): :class:`ServerURLs` for one test: the session Redis, flushed before the
    test, and a fresh MongoDB database, dropped after the test.

    ``redis_restartable`` / ``mongodb_restartable`` (function): a dedicated server with its own port
    and data dir, which the test may ``stop()``, ``kill()``, ``start()`` and ``restart()``. The Redis
    one is persistent (append-only file), so its data survives ``restart()``.

    ``mrq_redis_cluster`` (session): a 3-node Redis Cluster (:class:`mrq.servers.RedisClusterServers`);
    the test is skipped if this machine's redis-server cannot run in cluster mode.
    ``mrq_cluster_urls`` (function): like ``mrq_urls``, with ``redis`` the cluster's
    ``redis+cluster://`` URI (every node flushed before the test).

This module must stay cheap to import and must not import gevent: pytest loads it in every session.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

from mrq.servers import (
    MongoServer,
    RedisClusterServers,
    RedisServer,
    ServerError,
    ServerNotAvailable,
    mongodb_uri_with_database,
)

if TYPE_CHECKING:
    import pymongo
    import redis

__all__ = [
    "ExternalServer",
    "ServerURLs",
    "mongodb_restartable",
    "mrq_mongodb_server",
    "mrq_redis_server",
    "mrq_urls",
    "mrq_redis_cluster",
    "mrq_cluster_urls",
    "redis_restartable",
    "mrq_config",
    "mrq_worker",
    "mrq_worker_factory",
    "WorkerProcess",
    "wait_for_idle",
    "wait_until",
]

_Server = TypeVar("_Server", RedisServer, MongoServer)

REDIS_URI_ENV = "MRQ_TEST_REDIS_URI"
MONGODB_URI_ENV = "MRQ_TEST_MONGODB_URI"


# ---------------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerURLs:
    """Where one test's MRQ should connect."""

    redis: str
    #: Full connection string, including this test's database name.
    mongodb: str


class ExternalServer:
    """A server given through an environment variable: usable, but not ours to stop or restart."""

    def __init__(self, url: str, env_var: str) -> None:
        self.url = url
        self.env_var = env_var

    def uri(self, dbname: str) -> str:
        """Connection string for database ``dbname`` (MongoDB only)."""
        return mongodb_uri_with_database(self.url, dbname)

    def is_running(self) -> bool:
        return True

    @property
    def pid(self) -> None:
        return None

    def _cannot(self, action: str) -> NoReturn:
        pytest.skip(f"cannot {action} the external server given by {self.env_var}={self.url}")

    def start(self, timeout: float | None = None) -> ExternalServer:
        return self

    def stop(self, timeout: float | None = None) -> NoReturn:
        self._cannot("stop")

    def kill(self) -> NoReturn:
        self._cannot("kill")

    def restart(self, timeout: float | None = None) -> NoReturn:
        self._cannot("restart")

    def cleanup(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<ExternalServer {self.env_var}={self.url}>"


def _redis_client(url: str) -> redis.Redis:
    import redis  # imported lazily: keeps loading the plugin cheap

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


def _mongo_client(url: str) -> pymongo.MongoClient[dict[str, Any]]:
    import pymongo  # imported lazily: keeps loading the plugin cheap

    return pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)


def _check_external_redis(url: str) -> None:
    client = _redis_client(url)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"{REDIS_URI_ENV}={url}: cannot reach this Redis server: {exc}", pytrace=False)
    finally:
        client.close()


def _check_external_mongodb(url: str) -> None:
    client = _mongo_client(url)
    try:
        client.admin.command("ping")
    except Exception as exc:
        pytest.fail(f"{MONGODB_URI_ENV}={url}: cannot reach this MongoDB server: {exc}", pytrace=False)
    finally:
        client.close()


def _sigterm_to_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received signal {signum}")


def _handle_sigterm() -> None:
    """Make SIGTERM (what CI timeouts send) tear the session down like Ctrl-C, stopping our servers.

    By default SIGTERM ends Python without running fixture teardown nor atexit hooks, which would
    leave the servers running. Only done when nobody else installed a SIGTERM handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is _sigterm_to_keyboard_interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(server: RedisServer | MongoServer) -> None:
    """Start ``server``, failing the test with just the fix-it message if the program is missing."""
    _handle_sigterm()
    try:
        server.start()
    except ServerNotAvailable as exc:
        server.cleanup()
        pytest.fail(str(exc), pytrace=False)
    except BaseException:
        server.cleanup()
        raise


def _serve(server: _Server) -> Iterator[_Server]:
    """Start a server of our own for a fixture; kill it and remove its data afterwards."""
    _start(server)
    try:
        yield server
    finally:
        server.kill()  # its data is thrown away: no need for a graceful shutdown
        server.cleanup()


@pytest.fixture(scope="session")
def mrq_redis_server() -> Iterator[RedisServer | ExternalServer]:
    """The session's Redis server (or the one given by MRQ_TEST_REDIS_URI)."""
    url = os.environ.get(REDIS_URI_ENV)
    if url:
        _check_external_redis(url)
        yield ExternalServer(url, REDIS_URI_ENV)
        return
    yield from _serve(RedisServer())


@pytest.fixture(scope="session")
def mrq_mongodb_server() -> Iterator[MongoServer | ExternalServer]:
    """The session's MongoDB server (or the one given by MRQ_TEST_MONGODB_URI)."""
    url = os.environ.get(MONGODB_URI_ENV)
    if url:
        _check_external_mongodb(url)
        yield ExternalServer(url, MONGODB_URI_ENV)
        return
    yield from _serve(MongoServer())


_database_numbers = itertools.count(1)


@pytest.fixture
def mrq_urls(
    mrq_redis_server: RedisServer | ExternalServer,
    mrq_mongodb_server: MongoServer | ExternalServer,
) -> Iterator[ServerURLs]:
    """Server URLs for one test: a flushed Redis and a fresh MongoDB database (dropped afterwards)."""
    for server in (mrq_redis_server, mrq_mongodb_server):
        if not server.is_running():  # a previous test stopped a session server: bring it back
            server.start()

    redis_client = _redis_client(mrq_redis_server.url)
    try:
        if isinstance(mrq_redis_server, ExternalServer):
            redis_client.flushdb()  # only the database we were given
        else:
            redis_client.flushall()
    finally:
        redis_client.close()

    # The pid keeps names distinct between pytest-xdist workers sharing an external server.
    dbname = f"mrq_test_{os.getpid()}_{next(_database_numbers)}"
    yield ServerURLs(redis=mrq_redis_server.url, mongodb=mrq_mongodb_server.uri(dbname))

    mongo_client = _mongo_client(mrq_mongodb_server.uri(dbname))
    try:
        mongo_client.drop_database(dbname)
    except Exception as exc:
        warnings.warn(f"mrq_urls: could not drop test database {dbname}: {exc}", stacklevel=1)
    finally:
        mongo_client.close()


@pytest.fixture
def redis_restartable() -> Iterator[RedisServer]:
    """A persistent Redis server of this test's own, which the test may stop, kill and restart."""
    yield from _serve(RedisServer(persistent=True))


@pytest.fixture
def mongodb_restartable() -> Iterator[MongoServer]:
    """A MongoDB server of this test's own, which the test may stop, kill and restart."""
    yield from _serve(MongoServer())


@pytest.fixture(scope="session")
def mrq_redis_cluster() -> Iterator[RedisClusterServers]:
    """A 3-node Redis Cluster for the session (no replicas; skips the test if redis-server cannot do it)."""
    _handle_sigterm()
    cluster = RedisClusterServers()
    try:
        cluster.start()
    except ServerNotAvailable as exc:
        cluster.cleanup()
        pytest.fail(str(exc), pytrace=False)
    except ServerError as exc:
        cluster.cleanup()
        if "cluster" in str(exc).lower() and ("unrecognized" in str(exc).lower() or "support" in str(exc).lower()):
            pytest.skip(f"this redis-server cannot run in cluster mode (--cluster-enabled yes): {exc}")
        raise
    except BaseException:
        cluster.cleanup()
        raise
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def mrq_cluster_urls(mrq_redis_cluster: RedisClusterServers, mrq_urls: ServerURLs) -> ServerURLs:
    """Server URLs for one test on the session's Redis Cluster (flushed) and a fresh MongoDB database."""
    mrq_redis_cluster.wait_ok()  # a previous test may have restarted a node
    mrq_redis_cluster.flushall()
    return ServerURLs(redis=mrq_redis_cluster.uri, mongodb=mrq_urls.mongodb)


# ---------------------------------------------------------------------------------------------------
# MRQ context and workers
# ---------------------------------------------------------------------------------------------------

#: Settings that make test workers react fast (each can be overridden per worker).
FAST_WORKER_ENV = {
    "MRQ_MAX_LATENCY": "0.1",
    "MRQ_FLUSH_INTERVAL": "0.05",
    "MRQ_REPORT_INTERVAL": "1",
    "MRQ_HEARTBEAT_INTERVAL": "0.2",
    "MRQ_HEARTBEAT_TTL": "2",
    "MRQ_LOG_LEVEL": "INFO",
}


@pytest.fixture
def mrq_config(mrq_urls: ServerURLs) -> Iterator[Any]:
    """The MRQ context of this test process, pointed at the test servers (``setup_context``)."""
    from mrq.context import connections, setup_context

    config = setup_context(redis=mrq_urls.redis, mongodb_jobs=mrq_urls.mongodb)
    try:
        yield config
    finally:
        connections.reset()


class WorkerProcess:
    """A real ``mrq-worker`` subprocess against the test servers."""

    def __init__(self, urls: ServerURLs, cwd: str, env: dict[str, str] | None = None) -> None:
        self.urls = urls
        self.cwd = cwd
        self.env = dict(env or {})
        self.proc: Any = None
        self.args: list[str] = []

    def start(self, *args: str, queues: tuple[str, ...] | list[str] = ("default",),
              env: dict[str, str] | None = None, wait: bool = True) -> WorkerProcess:
        """Start ``mrq-worker ARGS QUEUES``; with ``wait``, return once its first report is stored."""
        import subprocess
        import sys

        self.args = [*args, *queues]
        full_env = dict(os.environ, **FAST_WORKER_ENV, MRQ_REDIS=self.urls.redis,
                        MRQ_MONGODB_JOBS=self.urls.mongodb, PYTHONUNBUFFERED="1")
        full_env.update(self.env)
        full_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker", *self.args], cwd=self.cwd,
                                     env=full_env)
        if wait:
            self.wait_for_report()
        return self

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def _db(self) -> Any:
        from mrq.context import connections

        return connections.mongodb_jobs

    def report(self) -> dict[str, Any] | None:
        """This worker's latest document in ``mrq_workers``."""
        return self._db()["mrq_workers"].find_one({"pid": self.pid}, sort=[("datestarted", -1)])

    def wait_for_report(self, timeout: float = 30) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            report = self.report()
            if report is not None:
                return report
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with code {self.proc.returncode} before reporting")
            time.sleep(0.05)
        raise AssertionError(f"worker {self.pid} wrote no report within {timeout} s")

    def wait_for_idle(self, timeout: float = 60, delayed_within: float = 30) -> None:
        """Wait until every queue is empty (delayed jobs that are due included) and nothing is in flight.

        A job leaves the in-flight record only after its status is stored, so once
        this returns, every job that was queued has its final status in MongoDB.
        """
        wait_for_idle(timeout=timeout, delayed_within=delayed_within)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL after ``timeout``)."""
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(sig)
        try:
            return int(self.proc.wait(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker {self.pid} did not exit within {timeout} s of signal {sig}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition", poll: float = 0.05) -> Any:
    """Call ``predicate`` until it returns something true (returned), or fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"{what} not reached within {timeout} s")


def wait_for_idle(timeout: float = 60, poll: float = 0.02, delayed_within: float = 30) -> None:
    """Wait until the queues of the current MRQ context are drained and no job is in flight.

    Delayed jobs (and retries) due within ``delayed_within`` seconds count as waiting."""
    import time

    from mrq.context import get_broker

    broker = get_broker()
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        queues = broker.known_queues()
        sizes = broker.sizes(queues) if queues else {}
        waiting = sum(q for q, _ in sizes.values())
        due = sum(broker.redis.zcount(broker.delayed_key(q), "-inf", time.time() + delayed_within)
                  for q in queues)
        inflight = broker.redis.hlen(broker.inflight_key)
        calm = calm + 1 if not (waiting or due or inflight) else 0
        if calm >= 3:
            return
        time.sleep(poll)
    raise AssertionError(f"queues not idle after {timeout} s: waiting={waiting} due={due} inflight={inflight}")


@pytest.fixture
def mrq_worker(mrq_urls: ServerURLs, mrq_config: Any, request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    """A :class:`WorkerProcess` (not started) run from the pytest root folder; killed after the test."""
    worker = WorkerProcess(mrq_urls, str(request.config.rootpath))
    try:
        yield worker
    finally:
        worker.kill()


@pytest.fixture
def mrq_worker_factory(mrq_urls: ServerURLs, mrq_config: Any,
                       request: pytest.FixtureRequest) -> Iterator[Any]:
    """Make several workers: ``mrq_worker_factory()`` returns a new :class:`WorkerProcess`."""
    workers: list[WorkerProcess] = []

    def make(env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(mrq_urls, str(request.config.rootpath), env)
        workers.append(worker)
        return worker

    try:
        yield make
    finally:
        for w in workers:
            w.kill()
