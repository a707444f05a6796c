"""pytest plugin for testing MRQ and MRQ tasks (registered as the ``mrq`` pytest11 entry point).

Servers
    ``mrq_redis_server`` / ``mrq_mongodb_server`` (session): a Redis and a MongoDB-compatible server
    (SecantusDB) started on free ports for the whole session. Set ``MRQ_TEST_REDIS_URI`` /
    ``MRQ_TEST_MONGODB_URI`` to use existing servers instead (those cannot be stopped or restarted;
    tests that try are skipped). Note that with ``MRQ_TEST_REDIS_URI`` the database in the URL is
    flushed before every test that uses ``mrq_urls``.

    ``mrq_urls`` (function): :class:`ServerURLs` for one test: the session Redis, flushed before the
    test, a Redis key prefix of the test's own (``ServerURLs.prefix``, also set as ``MRQ_REDIS_PREFIX``
    in this process's environment while the test runs), and a fresh MongoDB database, dropped after the
    test.

    ``redis_restartable`` / ``mongodb_restartable`` (function): a dedicated server with its own port
    and data dir, which the test may ``stop()``, ``kill()``, ``start()`` and ``restart()``. The Redis
    one is persistent (append-only file), so its data survives ``restart()``.

    ``mrq_redis_cluster`` (session): a 3-node Redis Cluster (:class:`mrq.servers.RedisClusterServers`);
    the test is skipped if this machine's redis-server cannot run in cluster mode.
    ``mrq_cluster_urls`` (function): like ``mrq_urls``, with ``redis`` the cluster's
    ``redis+cluster://`` URI (every node flushed before the test).

Isolation (see docs/testing.md)
    Each test's workers and its in-process context use the test's own Redis key prefix and MongoDB
    database, so a process that outlived its test could not take the jobs of another. Every process a
    test starts (directly or not: supervisord's children too) carries ``MRQ_TEST_OWNER=<test id>`` in its
    environment; after each test's teardown, any such process still alive, and any new descendant of this
    process, is killed with its process group and reported; the run fails, naming the test, if a test left
    one, or if any process the session started is alive at its end. ``mrq_leftover_processes = warn`` (or
    ``off``) in the pytest ini file only reports them (or skips the checks); ``mrq_leftover_grace`` (3 s)
    is how long a process on its way out gets before it counts as left.

This module must stay cheap to import and must not import gevent: pytest loads it in every session.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import warnings
from collections.abc import Generator, Iterator
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
PREFIX_ENV = "MRQ_REDIS_PREFIX"
#: In the environment of every process started while a test (or a fixture wider than a test) is set up, run or
#: torn down: who started it. ``SESSION_ENV``: which pytest process.
OWNER_ENV = "MRQ_TEST_OWNER"
SESSION_ENV = "MRQ_TEST_SESSION"


# ---------------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerURLs:
    """Where one test's MRQ should connect."""

    redis: str
    #: Full connection string, including this test's database name.
    mongodb: str
    #: The Redis key prefix (``redis_prefix``) of this test's workers and context; None: whatever
    #: ``MRQ_REDIS_PREFIX`` in the environment says (``mrq_urls`` sets it there too), else the default.
    prefix: str | None = None


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
    for server, name in ((mrq_redis_server, "mrq_redis_server"), (mrq_mongodb_server, "mrq_mongodb_server")):
        if not server.is_running():  # a previous test stopped a session server: bring it back (as the session's)
            previous = os.environ.get(OWNER_ENV)
            os.environ[OWNER_ENV] = f"session-scoped fixture {name}"
            try:
                server.start()
            finally:
                if previous is None:
                    os.environ.pop(OWNER_ENV, None)
                else:
                    os.environ[OWNER_ENV] = previous

    redis_client = _redis_client(mrq_redis_server.url)
    try:
        if isinstance(mrq_redis_server, ExternalServer):
            redis_client.flushdb()  # only the database we were given
        else:
            redis_client.flushall()
    finally:
        redis_client.close()

    # The pid keeps names distinct between pytest-xdist workers sharing an external server.
    number = next(_database_numbers)
    dbname = f"mrq_test_{os.getpid()}_{number}"
    prefix = f"mrq-test-{os.getpid()}-{number}"
    # In the environment too: a worker or a script that a test starts with os.environ, and setup_context() in the
    # test, agree on the prefix without being told.
    previous = os.environ.get(PREFIX_ENV)
    os.environ[PREFIX_ENV] = prefix
    try:
        yield ServerURLs(redis=mrq_redis_server.url, mongodb=mrq_mongodb_server.uri(dbname), prefix=prefix)
    finally:
        if previous is None:
            os.environ.pop(PREFIX_ENV, None)
        else:
            os.environ[PREFIX_ENV] = previous

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
    return ServerURLs(redis=mrq_redis_cluster.uri, mongodb=mrq_urls.mongodb, prefix=mrq_urls.prefix)


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

    prefix = {"redis_prefix": mrq_urls.prefix} if mrq_urls.prefix else {}
    config = setup_context(redis=mrq_urls.redis, mongodb_jobs=mrq_urls.mongodb, **prefix)
    try:
        yield config
    finally:
        connections.reset()


class WorkerProcess:
    """A real ``mrq-worker`` subprocess against the test servers (and the test's Redis prefix), in a session of
    its own: :meth:`kill` ends its whole process group (the processes its tasks started too)."""

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
        if self.urls.prefix:  # else inherited, as setup_context() in the test reads it
            full_env[PREFIX_ENV] = self.urls.prefix
        full_env.update(self.env)
        full_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker", *self.args], cwd=self.cwd,
                                     env=full_env, start_new_session=True)
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
        """SIGKILL the worker's process group (it is its leader), and reap the worker."""
        if self.proc is None:
            return
        kill_process_group(self.proc.pid)
        if self.proc.poll() is None:
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


def kill_process_group(pgid: int) -> None:
    """SIGKILL process group ``pgid`` (a process started with ``start_new_session=True`` leads its own), never
    the group of this process."""
    if pgid <= 1 or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------------
# Leftover processes: every process a test starts is ended with it
# ---------------------------------------------------------------------------------------------------

_LEFTOVERS_INI = "mrq_leftover_processes"
_GRACE_INI = "mrq_leftover_grace"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(_LEFTOVERS_INI, "mrq: what to do with processes a test left running (fail, warn or off)",
                  default="fail")
    parser.addini(_GRACE_INI, "mrq: seconds a process a test left gets to exit by itself before it is killed",
                  default="3")


class _Leftovers:
    """Per-test tracking of the processes started by the tests of this session (see the module docstring)."""

    def __init__(self, mode: str, grace: float = 3.0) -> None:
        self.mode = mode
        self.grace = grace
        self.session = f"{os.getpid()}-{time.time_ns()}"
        self.found: list[tuple[str, list[str]]] = []  # (owner, descriptions), in the order found
        self._before: set[tuple[int, float]] = set()

    @staticmethod
    def _describe(proc: Any) -> str:
        try:
            return f"pid {proc.pid} {' '.join(proc.cmdline())[:160]!r}"
        except Exception:  # noqa: BLE001 - gone meanwhile
            return f"pid {proc.pid}"

    def _owned(self, owner: str | None) -> list[Any]:
        """Live processes of this session owned by ``owner`` (any owner if None)."""
        import psutil

        found = []
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                env = proc.environ()
                if env.get(SESSION_ENV) != self.session or (owner is not None and env.get(OWNER_ENV) != owner):
                    continue
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        return found

    def _descendants(self) -> list[Any]:
        import psutil

        try:
            return [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return []

    @staticmethod
    def _key(proc: Any) -> tuple[int, float]:
        try:
            return (proc.pid, proc.create_time())
        except Exception:  # noqa: BLE001
            return (proc.pid, 0.0)

    def start_test(self, nodeid: str) -> None:
        os.environ[SESSION_ENV] = self.session
        os.environ[OWNER_ENV] = nodeid
        self._before = {self._key(p) for p in self._descendants()}

    @staticmethod
    def _owner(proc: Any) -> str:
        """The owner in the environment of ``proc``, else of its nearest ancestor that has one (a program such as
        Chromium may start its helpers with an environment of its own)."""
        import psutil

        me = os.getpid()
        while proc is not None and proc.pid != me:
            try:
                owner = proc.environ().get(OWNER_ENV)
                if owner:
                    return str(owner)
                proc = proc.parent()
            except (psutil.Error, OSError):
                return ""
        return ""

    def _strays(self, nodeid: str) -> list[Any]:
        from mrq.servers import _live_lock, _live_servers

        with _live_lock:  # a server overwrites its environment with its process title: it says who started it
            servers = {server.pid: getattr(server, "started_by", "") for server in _live_servers}
        procs = {p.pid: p for p in self._owned(nodeid) if servers.get(p.pid, nodeid) == nodeid}
        for proc in self._descendants():  # started with an environment of its own: new since the test began
            if proc.pid in procs or self._key(proc) in self._before:
                continue
            owner = servers[proc.pid] if proc.pid in servers else self._owner(proc)
            if owner in ("", nodeid):  # not a process of a module or session fixture
                procs[proc.pid] = proc
        return list(procs.values())

    def end_test(self, nodeid: str) -> None:
        """After the test's teardown: wait a little for processes on their way out, then kill the rest."""
        os.environ.pop(OWNER_ENV, None)
        strays = self._strays(nodeid)
        deadline = time.monotonic() + self.grace
        while strays and time.monotonic() < deadline:
            time.sleep(0.1)
            strays = self._strays(nodeid)
        if strays:
            self.found.append((nodeid, [self._describe(p) for p in strays]))
            _kill_all(strays)

    def end_session(self) -> None:
        strays = self._owned(None)
        if strays:
            import psutil

            by_owner: dict[str, list[str]] = {}
            for proc in strays:
                try:
                    owner = proc.environ().get(OWNER_ENV, "?")
                except (psutil.Error, OSError):
                    owner = "?"
                by_owner.setdefault(f"{owner} (still alive at the end of the run)", []).append(self._describe(proc))
            self.found.extend(by_owner.items())
            _kill_all(strays)

    def report(self) -> list[str]:
        lines = []
        for owner, procs in self.found:
            lines.append(f"{owner} left {len(procs)} process(es) running: " + "; ".join(procs))
        return lines


def _kill_all(procs: list[Any]) -> None:
    import psutil

    for proc in procs:
        try:
            kill_process_group(os.getpgid(proc.pid))
            proc.kill()
        except (psutil.Error, OSError):
            pass
    psutil.wait_procs(procs, timeout=5)


_leftovers: _Leftovers | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _leftovers
    mode = str(config.getini(_LEFTOVERS_INI) or "fail").strip().lower()
    if mode != "off":
        try:
            import psutil  # noqa: F401 - a dependency of MRQ; without it there is nothing to check with
        except ImportError:
            return
        _leftovers = _Leftovers(mode, float(config.getini(_GRACE_INI) or 3))
        os.environ[SESSION_ENV] = _leftovers.session


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
    """A fixture wider than a test (module, session...) owns the processes it starts, not the test that set it up."""
    if _leftovers is None or fixturedef.scope == "function":
        return (yield)
    previous = os.environ.get(OWNER_ENV)
    os.environ[OWNER_ENV] = f"{fixturedef.scope}-scoped fixture {fixturedef.argname}"
    try:
        return (yield)
    finally:
        if previous is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = previous


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    if _leftovers is not None:
        _leftovers.start_test(item.nodeid)
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:  # every fixture of the test is torn down (and, after the last test, the session's)
        if _leftovers is not None:
            _leftovers.end_test(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _leftovers is None:
        return
    _leftovers.end_session()
    if _leftovers.found and _leftovers.mode == "fail" and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _leftovers is None or not _leftovers.found:
        return
    verdict = "the run fails" if _leftovers.mode == "fail" else "reported only (mrq_leftover_processes = warn)"
    terminalreporter.section("mrq: processes left running by tests (killed; " + verdict + ")", sep="=",
                             red=_leftovers.mode == "fail", bold=True)
    for line in _leftovers.report():
        terminalreporter.line(line)
