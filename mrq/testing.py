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
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from mrq.servers import MongoServer, RedisServer, ServerNotAvailable, mongodb_uri_with_database

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
    "redis_restartable",
]

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


@pytest.fixture(scope="session")
def mrq_redis_server() -> Iterator[RedisServer | ExternalServer]:
    """The session's Redis server (or the one given by MRQ_TEST_REDIS_URI)."""
    url = os.environ.get(REDIS_URI_ENV)
    if url:
        _check_external_redis(url)
        yield ExternalServer(url, REDIS_URI_ENV)
        return
    server = RedisServer()
    _start(server)
    try:
        yield server
    finally:
        server.kill()  # its data is thrown away: no need for a graceful shutdown
        server.cleanup()


@pytest.fixture(scope="session")
def mrq_mongodb_server() -> Iterator[MongoServer | ExternalServer]:
    """The session's MongoDB server (or the one given by MRQ_TEST_MONGODB_URI)."""
    url = os.environ.get(MONGODB_URI_ENV)
    if url:
        _check_external_mongodb(url)
        yield ExternalServer(url, MONGODB_URI_ENV)
        return
    server = MongoServer()
    _start(server)
    try:
        yield server
    finally:
        server.kill()
        server.cleanup()


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
    server = RedisServer(persistent=True)
    _start(server)
    try:
        yield server
    finally:
        server.kill()
        server.cleanup()


@pytest.fixture
def mongodb_restartable() -> Iterator[MongoServer]:
    """A MongoDB server of this test's own, which the test may stop, kill and restart."""
    server = MongoServer()
    _start(server)
    try:
        yield server
    finally:
        server.kill()
        server.cleanup()
