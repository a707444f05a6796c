"""Lazy Redis and MongoDB clients built from the configuration, with round-trip counters.

``connections.redis`` (a ``redis.Redis``, or a ``redis.cluster.RedisCluster`` for a ``redis+cluster://``
URI), ``connections.mongodb_jobs`` (a pymongo ``Database``) and
``connections.mongodb_logs`` (``None`` when logs are disabled) are created on
first use. Any other config key starting with ``redis_`` or ``mongodb_`` whose
value is a URI becomes a connection of the same name (``connections.redis_cache``).

Every client counts its round trips (``roundtrips()``): the tests use them to
check the per-job cost, and the worker report shows them.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlparse

import pymongo
import redis
from pymongo import monitoring
from pymongo.database import Database
from pymongo.errors import PyMongoError
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.retry import Retry

from mrq.exceptions import ConnectionsError

__all__ = ["Connections", "ROUNDTRIPS", "make_redis", "make_mongodb", "make_sentinel_redis",
           "parse_sentinel_uri", "make_cluster_redis", "parse_cluster_uri"]

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


def _counting(cls: Any) -> type:
    if cls not in _counting_classes:
        def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
            ROUNDTRIPS["redis"] += 1
            return cls.send_packed_command(self, command, check_health)
        _counting_classes[cls] = type("Counting" + cls.__name__, (cls,),
                                      {"send_packed_command": send_packed_command})
    return _counting_classes[cls]


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

#: Every client retries a command through short outages: 40 tries with exponential backoff, at most 1 s apart.
_RETRIES = 40


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.05)


#: Seconds a Redis or MongoDB reply may take before the client gives up (and MRQ retries): a server that
#: stopped answering (a frozen process, a network that drops packets) must not block a worker forever.
#: A ``socket_timeout`` / ``socketTimeoutMS`` in the URI wins.
SOCKET_TIMEOUT = 60.0


def _client_options(max_connections: int) -> dict[str, Any]:
    return {"max_connections": max_connections, "socket_keepalive": True, "health_check_interval": 30,
            "socket_timeout": SOCKET_TIMEOUT,
            "retry": Retry(_backoff(), retries=_RETRIES),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}


def make_redis(uri: str, option: str = "redis", max_connections: int = 1000) -> redis.Redis | RedisCluster:
    """A Redis client for ``uri`` that retries through short outages (a server restart or a failover).

    ``redis://``, ``rediss://`` (TLS) and ``unix://`` URIs are read by redis-py; ``redis+sentinel://``
    URIs (see :func:`make_sentinel_redis`) give a client of the master that a Sentinel names;
    ``redis+cluster://`` URIs (see :func:`make_cluster_redis`) a Redis Cluster client.
    """
    scheme = uri.partition("://")[0] if isinstance(uri, str) and "://" in uri else ""
    if scheme in SENTINEL_SCHEMES:
        return make_sentinel_redis(uri, option, max_connections)
    if scheme in CLUSTER_SCHEMES:
        return make_cluster_redis(uri, option, max_connections)
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConnectionsError(
            f"--{option} {uri!r} is not a Redis URI: use redis://[:password@]host:port/db, "
            "rediss://... for TLS, unix:///path/to/socket, "
            "redis+sentinel://[:password@]host:port[,host:port...]/service_name/db or "
            "redis+cluster://[:password@]host:port[,host:port...].")
    try:
        if scheme != "unix":
            urlparse(uri).port  # noqa: B018 - ValueError for a port that is not a number in 0-65535
        client = redis.Redis.from_url(uri, **_client_options(max_connections))
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)  # an unknown ?option: TypeError now, not at first use
    except (ValueError, TypeError, redis.RedisError) as exc:  # a malformed address, option or value
        raise ConnectionsError(f"--{option} {uri!r} is not a valid Redis URI: {exc}") from None
    pool.connection_class = _counting(pool.connection_class)
    return client


def _split_hosts(uri: str, default_port: int, bad: Any) -> tuple[str, list[tuple[str, int]], str, str, str]:
    """``scheme://[[user]:password@]h:p[,h:p...]/path?query`` -> scheme, hosts, path, user:password, query."""
    scheme, _, rest = uri.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    out: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = item.strip(), str(default_port)
        if not host:
            raise bad("a server address is empty")
        if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise bad(f"port {port!r} of {item!r} is not a number from 1 to 65535")
        out.append((host.strip("[]"), int(port)))
    return scheme, out, path, userinfo, query


def _user_password(userinfo: str) -> tuple[str | None, str | None]:
    username, _, password = userinfo.partition(":") if ":" in userinfo else ("", "", userinfo)
    return unquote(username) or None, unquote(password) or None


def parse_sentinel_uri(uri: str, option: str = "redis") -> dict[str, Any]:
    """Read ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?options]``.

    The password (and user) are the master's; query options: ``sentinel_password`` (and
    ``sentinel_username``) for Sentinels that require AUTH, ``socket_timeout`` (seconds).
    ``rediss+sentinel://`` talks TLS to the master and the replicas.
    Returns ``sentinels`` [(host, port)], ``service``, ``db``, ``password``, ``username``, ``ssl`` and
    ``sentinel_kwargs``.
    """
    def bad(why: str) -> ConnectionsError:
        return ConnectionsError(
            f"--{option} {uri!r} is not a valid Sentinel URI ({why}); expected "
            "redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db][?sentinel_password=...].")

    if not isinstance(uri, str) or uri.partition("://")[0] not in SENTINEL_SCHEMES:
        raise bad("the scheme is redis+sentinel:// or rediss+sentinel://")
    scheme, sentinels, path, userinfo, query = _split_hosts(uri, 26379, bad)
    username, password = _user_password(userinfo)
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise bad("give the service name, and optionally the database number, in the path")
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise bad(f"database {parts[1]!r} is not a number") from None
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(params) - {"sentinel_password", "sentinel_username", "socket_timeout"}
    if unknown:
        raise bad(f"unknown option(s) {', '.join(sorted(unknown))}")
    sentinel_kwargs: dict[str, Any] = {}
    if params.get("sentinel_password"):
        sentinel_kwargs["password"] = params["sentinel_password"]
    if params.get("sentinel_username"):
        sentinel_kwargs["username"] = params["sentinel_username"]
    timeout = None
    if params.get("socket_timeout"):
        try:
            timeout = float(params["socket_timeout"])
        except ValueError:
            timeout = float("nan")
        if not 0 < timeout < 1e6:  # NaN too
            raise bad(f"socket_timeout {params['socket_timeout']!r} is not a number of seconds > 0")
    if timeout:
        sentinel_kwargs["socket_timeout"] = timeout
    return {"sentinels": sentinels, "service": unquote(parts[0]), "db": db,
            "password": password, "username": username,
            "ssl": scheme.startswith("rediss"), "socket_timeout": timeout, "sentinel_kwargs": sentinel_kwargs}


def make_sentinel_redis(uri: str, option: str = "redis", max_connections: int = 1000) -> redis.Redis:
    """A client of the master that the Sentinels of ``uri`` name (``redis+sentinel://...``).

    After a failover, the next connection asks the Sentinels again: the client's retries cover the switch.
    """
    from redis.sentinel import Sentinel

    spec = parse_sentinel_uri(uri, option)
    options = _client_options(max_connections)
    if spec["socket_timeout"]:
        options["socket_timeout"] = spec["socket_timeout"]
    if spec["ssl"]:
        options["ssl"] = True
    sentinel = Sentinel(spec["sentinels"], sentinel_kwargs=spec["sentinel_kwargs"] or None)
    client = sentinel.master_for(spec["service"], db=spec["db"], password=spec["password"],
                                 username=spec["username"], **options)
    pool = client.connection_pool
    pool.connection_class = _counting(pool.connection_class)
    return client


def _choice(choices: dict[str, Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        if value.lower() not in choices:
            raise ValueError(value)
        return choices[value.lower()]
    return parse


# Query options of a cluster URI -> their parser (a ValueError is a bad value).
_CLUSTER_OPTIONS: dict[str, Callable[[str], Any]] = {"socket_timeout": float, "socket_connect_timeout": float}
_CLUSTER_TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str,
    "ssl_cert_reqs": _choice({"required": "required", "optional": "optional", "none": "none"}),
    "ssl_check_hostname": _choice({"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}),
}


def parse_cluster_uri(uri: str, option: str = "redis") -> dict[str, Any]:
    """Read ``redis+cluster://[[user]:password@]host:port[,host:port...][?options]``.

    The hosts are startup nodes: any one that answers gives the client the layout of the whole cluster (list
    several in case one is down). A Redis Cluster has only database 0, so the URI has no path. Query options:
    ``socket_timeout``, ``socket_connect_timeout`` (seconds); with ``rediss+cluster://`` (TLS to every node)
    also ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` (paths), ``ssl_cert_reqs`` (required, optional,
    none) and ``ssl_check_hostname`` (true, false).
    Returns ``nodes`` [(host, port)], ``username``, ``password``, ``ssl`` and ``options`` (client keyword
    arguments).
    """
    def bad(why: str) -> ConnectionsError:
        return ConnectionsError(
            f"--{option} {uri!r} is not a valid Redis Cluster URI ({why}); expected "
            "redis+cluster://[[user]:password@]host:port[,host:port...][?socket_timeout=...], "
            "or rediss+cluster://... for TLS.")

    scheme, nodes, path, userinfo, query = _split_hosts(uri, 6379, bad)
    username, password = _user_password(userinfo)
    if path.strip("/"):
        raise bad(f"a Redis Cluster has only database 0, so the URI takes no path: remove '/{path}'")
    ssl = scheme.startswith("rediss")
    allowed = {**_CLUSTER_OPTIONS, **(_CLUSTER_TLS_OPTIONS if ssl else {})}
    options: dict[str, Any] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name == "db":
            raise bad("a Redis Cluster has only database 0: remove the db option")
        if name in _CLUSTER_TLS_OPTIONS and not ssl:
            raise bad(f"option {name} is for TLS: use rediss+cluster://")
        if name not in allowed:
            raise bad(f"unknown option {name}; known: {', '.join(sorted(allowed))}")
        try:
            options[name] = allowed[name](values[-1])
        except ValueError:
            raise bad(f"option {name}={values[-1]!r} is not a valid value") from None
    return {"nodes": nodes, "username": username, "password": password, "ssl": ssl, "options": options}


_T = TypeVar("_T")


def _outage(exc: BaseException) -> bool:
    """True for a cluster error that waiting may fix: a node down or restarting (also every node, when the
    layout cannot be read), a slot without a node during a failover. Not a refused password."""
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return False
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ClusterDownError | SlotNotCoveredError):
        return True
    return isinstance(exc, RedisClusterException) and exc.__cause__ is not None and _outage(exc.__cause__)


def _with_backoff(do: Callable[[], _T]) -> _T:
    """``do()``, tried again after an outage error with the backoff of the other clients."""
    backoff = _backoff()
    failures = 0
    while True:
        try:
            return do()
        except Exception as exc:
            failures += 1
            if failures > _RETRIES or not _outage(exc):
                raise
            time.sleep(backoff.compute(failures))


class _ClusterClient(RedisCluster):
    """redis-py's ``RedisCluster``, retrying through outages like MRQ's other clients.

    redis-py retries a failed command on a cluster at once, without waiting (all its tries fail within 0.1 s
    while the node of MRQ's slot restarts), and a transaction only while some node answers. So redis-py is told
    to try once (``retry=Retry(NoBackoff(), 0)``; a failed try still makes it read the cluster's layout again,
    as a failover moves slots), and this client tries again after a wait (:func:`_with_backoff`), commands and
    pipelines alike (:class:`_ReplayingPipeline`).
    """

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return _with_backoff(lambda: RedisCluster.execute_command(self, *args, **kwargs))

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = _ReplayingPipeline  # the pipeline redis-py built, with the methods below
        pipe._mrq_commands = []  # type: ignore[attr-defined]
        return pipe


class _ReplayingPipeline(ClusterPipeline):
    """A cluster pipeline retried like :class:`_ClusterClient`. redis-py empties a pipeline whose ``execute``
    failed, so its commands are kept here to be queued again. Not after ``watch()``: the commands then run at
    once, and a retry could not keep the watch, so such a transaction is tried once."""

    _mrq_commands: list[tuple[tuple[Any, ...], dict[str, Any]]] | None

    def watch(self, *names: Any) -> Any:
        self._mrq_commands = None
        return super().watch(*names)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._mrq_commands is not None:
            self._mrq_commands.append((args, kwargs))
        return super().execute_command(*args, **kwargs)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands, self._mrq_commands = self._mrq_commands, []
        if commands is None:
            return ClusterPipeline.execute(self, raise_on_error)

        def attempt() -> list[Any]:
            if not len(self):  # emptied by the failed try
                for args, kwargs in commands:
                    ClusterPipeline.execute_command(self, *args, **kwargs)
            return ClusterPipeline.execute(self, raise_on_error)

        return _with_backoff(attempt)


def make_cluster_redis(uri: str, option: str = "redis", max_connections: int = 1000) -> RedisCluster:
    """A Redis Cluster client for ``uri`` (``redis+cluster://...``, see :func:`parse_cluster_uri`).

    It reads the cluster's layout now, trying for as long as the other clients retry a command (about 35 s)
    before it gives up with a :class:`ConnectionsError`. Commands retry through short outages like the other
    clients; round trips are counted on every node's connections. ``max_connections`` is per node.
    """
    from redis.connection import Connection, SSLConnection

    spec = parse_cluster_uri(uri, option)
    if not hasattr(redis.cluster, "TransactionStrategy"):
        raise ConnectionsError(
            f"--{option} {uri!r}: MRQ needs transactions on a Redis Cluster, which redis-py {redis.__version__} "
            "does not have; upgrade it: pip install 'redis>=6.1'.")
    (host, port), *others = spec["nodes"]
    counting = _counting(SSLConnection if spec["ssl"] else Connection)

    def connect() -> RedisCluster:
        # RedisCluster hands its keyword arguments (connection_class included) to each node's ConnectionPool
        # only when it is built from a URL; otherwise to Redis(), which takes no connection_class. So the first
        # node goes in a URL that carries nothing else (every option is a keyword argument).
        return _ClusterClient(
            url=f"redis://[{host}]:{port}" if ":" in host else f"redis://{host}:{port}",
            startup_nodes=[ClusterNode(h, p) for h, p in others], connection_class=counting,
            retry=Retry(NoBackoff(), retries=0), max_connections=max_connections,
            socket_keepalive=True, username=spec["username"], password=spec["password"], **spec["options"])

    try:
        return _with_backoff(connect)
    except (redis.RedisError, RedisClusterException) as exc:
        nodes = ", ".join(f"{h}:{p}" for h, p in spec["nodes"])
        raise ConnectionsError(
            f"--{option} {uri!r}: cannot read the layout of the Redis Cluster from {nodes} "
            f"({type(exc).__name__}: {exc}). Check that the nodes run, in cluster mode (CLUSTER INFO says "
            "cluster_state:ok), and that the password and TLS options are right.") from None


def make_mongodb(uri: str, option: str = "mongodb_jobs") -> Database:
    """The database named by ``uri`` (default name ``mrq``), with command monitoring."""
    if not isinstance(uri, str) or not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConnectionsError(f"--{option} {uri!r} is not a valid MongoDB URI; expected "
                               "mongodb://host:port/database[?options] or mongodb+srv://...")
    client: pymongo.MongoClient | None = None
    try:
        with warnings.catch_warnings():  # pymongo ignores an unknown option or a bad value, with a warning
            warnings.simplefilter("error", UserWarning)
            extra = {} if "sockettimeoutms" in uri.lower() else {"socketTimeoutMS": int(SOCKET_TIMEOUT * 1000)}
            client = pymongo.MongoClient(uri, event_listeners=[_CommandCounter()], tz_aware=False, connect=False,
                                         **extra)
        return client[client.get_default_database(default="mrq").name]
    except (PyMongoError, ValueError, TypeError, UserWarning) as exc:  # InvalidURI, ConfigurationError, InvalidName
        if client is not None:
            client.close()
        raise ConnectionsError(
            f"--{option} {uri!r} is not a valid MongoDB URI ({exc}); expected "
            "mongodb://host:port/database[?options].") from None


class Connections:
    """The connections of the current configuration, created on first use."""

    def __init__(self, config_source: Callable[[], dict[str, Any]] | None = None) -> None:
        """``config_source``: where to read the configuration when :meth:`configure` was not called (the process's
        current one, for :data:`mrq.runtime.connections`)."""
        self._lock = threading.RLock()  # _create may ask for another connection
        self._cache: dict[str, Any] = {}
        self._config: dict[str, Any] | None = None
        self._config_source = config_source

    def configure(self, config: dict[str, Any]) -> None:
        """Use ``config`` from now on (closes nothing: call :meth:`reset` for that)."""
        self._config = config
        self._cache.clear()

    def _get_config(self) -> dict[str, Any]:
        if self._config is None:
            if self._config_source is None:
                raise ConnectionsError("These connections have no configuration: call configure(config) first.")
            self._config = self._config_source()
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
            logs = str(config.get("mongodb_logs", "1"))
            if logs == "0":
                return None
            if logs == "1":
                return self.mongodb_jobs
            return make_mongodb(logs, "mongodb_logs")
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
            elif isinstance(value, RedisCluster):
                value.close()
            elif isinstance(value, Database):
                value.client.close()
        self._cache.clear()


def redact_uri(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***`` (for logs and messages)."""
    import re

    return re.sub(r"(://[^:@/]*:)[^@/]*@", r"\1***@", str(uri))


def unreachable(server: str, uri: str, option: str, env: str, exc: BaseException) -> str:
    """One line saying that ``server`` (``"MongoDB"``, ``"Redis"``) does not answer at ``uri``, why in a few words
    (not pymongo's topology description) and what to do."""
    reason = (str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0].splitlines() or [""])[0][:200]
    return (f"{server} is not reachable at {redact_uri(uri)} ({reason or type(exc).__name__}). Start it, point "
            f"--{option} (or {env}) at a running server, or use --embedded for local servers under ./.mrq/")
