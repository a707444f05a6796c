"""Deployment across machines (docs/deployment.md): Redis through Sentinel and TLS, MongoDB URI options.

Servers run on loopback ports of their own; a test skips (saying why) when this machine's redis-server
cannot do what it needs.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mrq.connections import ROUNDTRIPS, make_mongodb, make_redis, parse_sentinel_uri
from mrq.exceptions import ConnectionsError
from mrq.servers import RedisServer, ServerError, free_port
from mrq.testing import ServerURLs, WorkerProcess, wait_until

T = "tests.tasks.general."


# ------------------------------------------------------------------------------------------ URIs


def test_sentinel_uri_is_parsed():
    spec = parse_sentinel_uri("redis+sentinel://:s3cr%40t@10.0.0.1:26379,10.0.0.2/mymaster/2?sentinel_password=sp")
    assert spec["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (spec["service"], spec["db"], spec["password"], spec["username"]) == ("mymaster", 2, "s3cr@t", None)
    assert spec["sentinel_kwargs"] == {"password": "sp"}
    assert not spec["ssl"]
    assert parse_sentinel_uri("rediss+sentinel://user:pw@h:1/m")["ssl"]
    assert parse_sentinel_uri("redis+sentinel://user:pw@h:1/m")["username"] == "user"


@pytest.mark.parametrize("uri, why", [
    ("redis+sentinel://h:1", "service name"),
    ("redis+sentinel://h:1/m/x", "not a number"),
    ("redis+sentinel://h:port/m", "not a number"),
    ("redis+sentinel://h:1/m?colour=red", "unknown option"),
    ("redis+sentinel://,h:1/m", "empty"),
])
def test_bad_sentinel_uris_say_what_is_wrong(uri, why):
    with pytest.raises(ConnectionsError, match=why):
        make_redis(uri)


def test_rediss_uri_uses_tls_and_password():
    client = make_redis("rediss://:pw@redis.example:6380/3?ssl_cert_reqs=none")
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "CountingSSLConnection"
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("redis.example", 6380, 3, "pw")


def test_mongodb_replica_set_and_write_concern_pass_through():
    db = make_mongodb("mongodb://u:p@db1:27018,db2:27019,db3:27020/jobs?replicaSet=rs0&w=majority&wtimeoutMS=5000"
                      "&readPreference=primaryPreferred&authSource=admin")
    assert db.name == "jobs"
    assert db.write_concern.document == {"w": "majority", "wtimeout": 5000}
    assert db.client.options.replica_set_name == "rs0"
    assert db.read_preference.mongos_mode == "primaryPreferred"
    assert sorted(db.client.topology_description.server_descriptions()) == [
        ("db1", 27018), ("db2", 27019), ("db3", 27020)]
    db.client.close()


# ------------------------------------------------------------------------------------------ Sentinel


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel`` watching one master."""

    kind = "sentinel"

    def __init__(self, master_port: int, service: str = "mymaster") -> None:
        super().__init__()
        self.master_port, self.service = master_port, service

    def _prepare(self) -> None:
        super()._prepare()
        (self.data_dir / "sentinel.conf").write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.data_dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 5000\n")

    def command(self) -> list[str]:
        return [super().command()[0], str(self.data_dir / "sentinel.conf"), "--sentinel"]


@pytest.fixture
def sentinel_uri() -> Iterator[str]:
    master = RedisServer()
    sentinel: SentinelServer | None = None
    try:
        master.start()
        sentinel = SentinelServer(master.port)
        try:
            sentinel.start()
        except ServerError as exc:
            pytest.skip(f"redis-server could not start as a Sentinel (--sentinel): {exc}")
        yield f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"
    finally:
        if sentinel is not None:
            sentinel.cleanup()
        master.cleanup()


def test_worker_and_client_through_sentinel(sentinel_uri: str, mrq_urls: ServerURLs, request: Any) -> None:
    from mrq.context import connections, setup_context
    from mrq.job import Job, queue_job

    setup_context(redis=sentinel_uri, mongodb_jobs=mrq_urls.mongodb)
    worker = WorkerProcess(ServerURLs(redis=sentinel_uri, mongodb=mrq_urls.mongodb), str(request.config.rootpath))
    try:
        master = connections.redis.connection_pool.get_master_address()
        assert master[0] == "127.0.0.1"
        worker.start("--greenlets", "2")
        job_id = queue_job(T + "Add", {"a": 40, "b": 2})
        assert Job(job_id).wait(timeout=30) == 42
        assert worker.stop() == 0
    finally:
        worker.kill()
        connections.reset()


# ------------------------------------------------------------------------------------------ TLS


def _make_certificate(directory: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem), made with openssl."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
                   check=True, capture_output=True, timeout=60)


class TLSRedisServer(RedisServer):
    """A redis-server that accepts only TLS connections (a self-signed certificate in ``cert_dir``, made in its
    data dir if not given); a cluster node talks TLS on the cluster bus too."""

    kind = "redis-tls"

    def __init__(self, port: int | None = None, cluster: bool = False, cert_dir: Path | None = None) -> None:
        super().__init__(port=port, cluster=cluster)
        self.cert_dir = cert_dir or self.data_dir

    def _prepare(self) -> None:
        super()._prepare()
        if not (self.cert_dir / "cert.pem").exists():
            _make_certificate(self.cert_dir)

    def command(self) -> list[str]:
        argv = super().command()
        argv[argv.index("--port") + 1] = "0"
        return [*argv, "--tls-port", str(self.port), "--tls-cert-file", str(self.cert_dir / "cert.pem"),
                "--tls-key-file", str(self.cert_dir / "key.pem"), "--tls-ca-cert-file",
                str(self.cert_dir / "cert.pem"), "--tls-auth-clients", "no",
                *(["--tls-cluster", "yes"] if self.cluster else [])]

    def ping(self) -> bool:
        return (self.cert_dir / "cert.pem").exists() and _tls_ping(self.port, self.cert_dir / "cert.pem")


def _tls_ping(port: int, ca: Path) -> bool:
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except (OSError, ssl.SSLError):
        return False


def test_rediss_against_a_tls_server() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    server = TLSRedisServer(port=free_port())
    try:
        try:
            server.start()
        except ServerError as exc:
            if "tls" not in server.log_tail().lower() or "bad directive" not in server.log_tail().lower():
                raise
            pytest.skip(f"this redis-server has no TLS support (built without BUILD_TLS=yes): {exc}")
        ca = server.data_dir / "cert.pem"
        client = make_redis(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca}")
        client.set("k", "v")
        assert client.get("k") == b"v"
        plain = make_redis(f"redis://127.0.0.1:{server.port}/0")
        plain.connection_pool.connection_kwargs["socket_timeout"] = 1
        plain.connection_pool.connection_kwargs["retry"] = None
        with pytest.raises(Exception):  # noqa: B017 - plain text is refused by a TLS-only port
            plain.execute_command("PING")
        client.close()
    finally:
        server.cleanup()


def test_rediss_cluster_against_a_tls_cluster(tmp_path: Path) -> None:
    """rediss+cluster://: TLS to every node of a 3-node cluster whose nodes accept only TLS, round trips
    counted."""
    import redis

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    _make_certificate(tmp_path)
    ca = tmp_path / "cert.pem"
    ports: list[int] = []
    while len(ports) < 3:  # the cluster bus listens on port + 10000
        port = free_port()
        if port + 10000 <= 65535 and port not in ports:
            ports.append(port)
    nodes = [TLSRedisServer(port=port, cluster=True, cert_dir=tmp_path) for port in ports]
    try:
        try:
            for node in nodes:
                node.start()
        except ServerError as exc:
            if "tls" not in str(exc).lower() or "bad directive" not in str(exc).lower():
                raise
            pytest.skip(f"this redis-server has no TLS support (built without BUILD_TLS=yes): {exc}")
        admin = [redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca)) for port in ports]
        for i, client in enumerate(admin):
            client.execute_command("CLUSTER ADDSLOTSRANGE", i * 5462, min(16383, (i + 1) * 5462 - 1))
            if i:
                client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
        wait_until(lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in admin), timeout=30,
                   what="the TLS cluster ok")
        client = make_redis(f"rediss+cluster://127.0.0.1:{ports[0]}?ssl_ca_certs={ca}")
        before = ROUNDTRIPS["redis"]
        for key in ("{a}", "{b}", "{c}"):  # one key on each node (slots 15495, 3300, 7365)
            client.set(key, key)
        assert client.mget_nonatomic(["{a}", "{b}", "{c}"]) == [b"{a}", b"{b}", b"{c}"]
        assert {n.port for n in client.get_primaries()} == set(ports)
        assert ROUNDTRIPS["redis"] - before >= 6
        assert client.get_node_from_key("{a}").redis_connection.connection_pool.connection_class.__name__ == (
            "CountingSSLConnection")
        client.close()
        for c in admin:
            c.close()
    finally:
        for node in nodes:
            node.cleanup()
