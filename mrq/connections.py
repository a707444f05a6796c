"""Lazy Redis and MongoDB clients built from the configuration, with round-trip counters.

``connections.redis``, ``connections.mongodb_jobs`` (a pymongo ``Database``) and
``connections.mongodb_logs`` (``None`` when logs are disabled) are created on
first use. Any other config key starting with ``redis_`` or ``mongodb_`` whose
value is a URI becomes a connection of the same name (``connections.redis_cache``).

Every client counts its round trips (``roundtrips()``): the tests use them to
check the per-job cost, and the worker report shows them.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any
from urllib.parse import urlparse

import pymongo
import redis
from pymongo import monitoring
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mrq.exceptions import ConnectionsError

__all__ = ["Connections", "ROUNDTRIPS", "make_redis", "make_mongodb"]

#: Round trips made by this process, by kind ("redis", "mongodb"). A pipeline or a
#: bulk write counts once.
ROUNDTRIPS: Counter[str] = Counter()


class _CommandCounter(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        ROUNDTRIPS["mongodb"] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


_counting_classes: dict[type, type] = {}


def _counting(cls: type) -> type:
    if cls not in _counting_classes:
        def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
            ROUNDTRIPS["redis"] += 1
            return cls.send_packed_command(self, command, check_health)
        _counting_classes[cls] = type("Counting" + cls.__name__, (cls,),
                                      {"send_packed_command": send_packed_command})
    return _counting_classes[cls]


def make_redis(uri: str, option: str = "redis", max_connections: int = 1000) -> redis.Redis:
    """A Redis client for ``uri`` that retries through short outages (a server restart)."""
    parsed = urlparse(uri)
    if parsed.scheme not in {"redis", "rediss", "unix"}:
        raise ConnectionsError(
            f"--{option} {uri!r} is not a Redis URI: use redis://[:password@]host:port/db, "
            "rediss://... for TLS or unix:///path/to/socket.")
    try:
        client = redis.Redis.from_url(
            uri, max_connections=max_connections, socket_keepalive=True, health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=40),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    except ValueError as exc:
        raise ConnectionsError(f"--{option} {uri!r} is not a valid Redis URI: {exc}") from None
    pool = client.connection_pool
    pool.connection_class = _counting(pool.connection_class)
    return client


def make_mongodb(uri: str, option: str = "mongodb_jobs") -> Database:
    """The database named by ``uri`` (default name ``mrq``), with command monitoring."""
    if not isinstance(uri, str) or not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConnectionsError(f"--{option} {uri!r} is not a valid MongoDB URI; expected "
                               "mongodb://host:port/database[?options] or mongodb+srv://...")
    try:
        client: pymongo.MongoClient = pymongo.MongoClient(
            uri, event_listeners=[_CommandCounter()], tz_aware=False, connect=False)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise ConnectionsError(
            f"--{option} {uri!r} is not a valid MongoDB URI ({exc}); expected "
            "mongodb://host:port/database[?options].") from None
    name = client.get_default_database(default="mrq").name
    return client[name]


class Connections:
    """The connections of the current configuration, created on first use."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # _create may ask for another connection
        self._cache: dict[str, Any] = {}
        self._config: dict[str, Any] | None = None

    def configure(self, config: dict[str, Any]) -> None:
        """Use ``config`` from now on (closes nothing: call :meth:`reset` for that)."""
        self._config = config
        self._cache.clear()

    def _get_config(self) -> dict[str, Any]:
        if self._config is None:
            from mrq.context import get_current_config
            self._config = get_current_config()
        return self._config

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._cache:
            return self._cache[name]
        with self._lock:
            if name not in self._cache:
                self._cache[name] = self._create(name)
        return self._cache[name]

    def _create(self, name: str) -> Any:
        config = self._get_config()
        if name == "mongodb_logs":
            value = str(config.get("mongodb_logs", "1"))
            if value == "0":
                return None
            if value == "1":
                return self.mongodb_jobs
            return make_mongodb(value, "mongodb_logs")
        value = config.get(name)
        if not isinstance(value, str):
            if value is not None and (name.startswith("redis") or name.startswith("mongodb")):
                return value  # a client object given in the config file
            raise AttributeError(f"No connection named {name!r}: set {name.upper()} in the config")
        if name.startswith("redis"):
            return make_redis(value, name, int(config.get("redis_max_connections", 1000)))
        if name.startswith("mongodb"):
            return make_mongodb(value, name)
        raise AttributeError(f"No connection named {name!r}")

    def reset(self) -> None:
        """Close every client; the next access reconnects (after a fork, in tests)."""
        for value in self._cache.values():
            if isinstance(value, redis.Redis):
                value.connection_pool.disconnect()
            elif isinstance(value, Database):
                value.client.close()
        self._cache.clear()
