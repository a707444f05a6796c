"""Clients from URIs, clear errors for bad ones, and round-trip counters."""

from __future__ import annotations

import re

import pytest

from mrq.connections import ROUNDTRIPS, Connections, make_mongodb, make_redis, parse_cluster_uri
from mrq.exceptions import ConnectionsError


@pytest.mark.parametrize("uri", ["http://localhost", "localhost:6379", ""])
def test_bad_redis_uri(uri):
    with pytest.raises(ConnectionsError, match="not a Redis URI"):
        make_redis(uri)


@pytest.mark.parametrize("uri", ["notauri", "mongodb://", "mongodb://h:99999999/db"])
def test_bad_mongodb_uri(uri):
    with pytest.raises(ConnectionsError, match="not a valid MongoDB URI"):
        make_mongodb(uri)


def test_roundtrips_are_counted(mrq_urls):
    r = make_redis(mrq_urls.redis)
    db = make_mongodb(mrq_urls.mongodb)
    r.ping()
    db.command("ping")  # connection set-up out of the way
    before = ROUNDTRIPS.copy()
    r.set("k", 1)
    pipe = r.pipeline()
    for _ in range(10):
        pipe.incr("k")
    pipe.execute()
    db["c"].insert_many([{"i": i} for i in range(10)])
    db["c"].find_one()
    assert ROUNDTRIPS["redis"] - before["redis"] == 2
    assert ROUNDTRIPS["mongodb"] - before["mongodb"] == 2
    db.client.close()
    r.close()


def test_extra_connections_from_config(mrq_urls):
    conns = Connections()
    conns.configure({"redis": mrq_urls.redis, "mongodb_jobs": mrq_urls.mongodb, "mongodb_logs": "1",
                     "redis_cache": mrq_urls.redis.replace("/0", "/1"), "mongodb_other": mrq_urls.mongodb})
    assert conns.mongodb_logs is conns.mongodb_jobs
    assert conns.redis_cache.connection_pool.connection_kwargs["db"] == 1
    assert conns.mongodb_other.name == conns.mongodb_jobs.name
    with pytest.raises(AttributeError, match="No connection named"):
        conns.redis_missing  # noqa: B018
    conns.reset()


# ------------------------------------------------------------------------------------------ Redis Cluster URIs


def test_cluster_uri_is_parsed():
    spec = parse_cluster_uri("redis+cluster://:s3cr%40t@10.0.0.1:7000,10.0.0.2,[::1]:7002/?socket_timeout=2.5")
    assert spec["nodes"] == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert (spec["username"], spec["password"], spec["ssl"]) == (None, "s3cr@t", False)
    assert spec["options"] == {"socket_timeout": 2.5}
    tls = parse_cluster_uri("rediss+cluster://user:pw@h:7000?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none"
                            "&ssl_check_hostname=false")
    assert (tls["username"], tls["password"], tls["ssl"]) == ("user", "pw", True)
    assert tls["options"] == {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "none", "ssl_check_hostname": False}


@pytest.mark.parametrize("uri, why", [
    ("redis+cluster://h:7000/0", "only database 0, so the URI takes no path: remove '/0'"),
    ("redis+cluster://h:7000/?db=0", "only database 0: remove the db option"),
    ("redis+cluster://h:7000?colour=red", "unknown option colour"),
    ("redis+cluster://h:7000?ssl_ca_certs=/ca.pem", "is for TLS: use rediss"),
    ("redis+cluster://h:7000?socket_timeout=soon", "socket_timeout='soon' is not a valid value"),
    ("rediss+cluster://h:7000?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe' is not a valid value"),
    ("redis+cluster://h:port", "port 'port' of 'h:port' is not a number from 1 to 65535"),
    ("redis+cluster://h:70000", "port '70000' of 'h:70000' is not a number from 1 to 65535"),
    ("redis+cluster://h:7000,,h:7001", "a server address is empty"),
    ("redis+cluster://", "a server address is empty"),
])
def test_bad_cluster_uris_say_what_is_wrong(uri, why):
    with pytest.raises(ConnectionsError, match=re.escape(why)) as info:
        make_redis(uri)
    assert "redis+cluster://[[user]:password@]host:port[,host:port...]" in str(info.value)  # the expected form


def test_a_cluster_uri_on_a_server_without_cluster_mode_says_so(mrq_urls):
    port = mrq_urls.redis.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(ConnectionsError, match="Cluster mode is not enabled.*cluster_state:ok"):
        make_redis(f"redis+cluster://127.0.0.1:{port}")


def test_clients_give_up_on_a_server_that_stops_answering():
    """A frozen server (SIGSTOP, a network that drops packets) must not block a worker forever: both clients
    have a reply timeout (SOCKET_TIMEOUT), which a timeout in the URI overrides."""
    from mrq.connections import SOCKET_TIMEOUT, make_mongodb, make_redis

    assert make_redis("redis://127.0.0.1:1/0").connection_pool.connection_kwargs["socket_timeout"] == SOCKET_TIMEOUT
    assert make_redis("redis://127.0.0.1:1/0?socket_timeout=5").connection_pool.connection_kwargs[
        "socket_timeout"] == 5
    db = make_mongodb("mongodb://127.0.0.1:1/x")
    assert db.client.options.pool_options.socket_timeout == SOCKET_TIMEOUT
    assert make_mongodb("mongodb://127.0.0.1:1/x?socketTimeoutMS=5000").client.options.pool_options.socket_timeout == 5
