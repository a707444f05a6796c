"""Clients from URIs, clear errors for bad ones, and round-trip counters."""

from __future__ import annotations

import pytest

from mrq.connections import ROUNDTRIPS, Connections, make_mongodb, make_redis
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
