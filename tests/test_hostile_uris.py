"""Hostile Redis and MongoDB URIs, property-based: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
``mongodb://`` and anything else. Whatever the text, building the client either gives a client (that has not
connected yet) or raises :class:`ConnectionsError` naming the option and the URI.

No server is needed: clients are built, never used. ``mongodb+srv://`` is left out of the generated URIs: building
such a client resolves DNS records.
"""

from __future__ import annotations

from typing import Any

import pymongo.database
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mrq.connections import make_mongodb, make_redis, parse_sentinel_uri
from mrq.exceptions import ConnectionsError

HOSTILE = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

URL_CHARS = st.sampled_from(list("abcz09.-_~:@/,?&=#%[]{} +\\'\"") + ["\u00e9", "\udcff", "\x00"])
PIECE = st.text(URL_CHARS, max_size=8) | st.sampled_from([
    "%zz", "%00", "%2F", "", "localhost", "127.0.0.1", "[::1]", "[::1", "::1]", "h:1", "h:99999", "h:-1", "h:port",
    "h:", ":1"])
PORT = st.integers(-2, 70000).map(str) | st.sampled_from(["", "x", "1e3", "0x10", "\u0663", " 1"])
REDIS_QUERY_KEYS = ["db", "socket_timeout", "socket_connect_timeout", "health_check_interval", "max_connections",
                    "retry_on_timeout", "ssl_cert_reqs", "password", "client_name", "protocol", "decode_responses",
                    "sentinel_password", "sentinel_username", "unknown"]
MONGODB_QUERY_KEYS = ["replicaSet", "authSource", "tls", "ssl", "connectTimeoutMS", "w", "maxPoolSize",
                      "readPreference", "directConnection", "authMechanism", "appname", "compressors", "unknown"]
QUERY_VALUE = st.sampled_from(["", "1", "0", "-1", "nan", "inf", "1e400", "true", "x", "none", "%zz", "\udcff"]) | PIECE


def _query(keys: list[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(st.sampled_from(keys), QUERY_VALUE).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(pair, max_size=3).map(lambda pairs: ("?" + "&".join(pairs)) if pairs else "")


def _uri(schemes: list[str], keys: list[str]) -> st.SearchStrategy[str]:
    userinfo = st.one_of(st.just(""), PIECE.map(lambda p: p + "@"),
                         st.tuples(PIECE, PIECE).map(lambda u: f"{u[0]}:{u[1]}@"))
    hosts = st.lists(st.tuples(PIECE, PORT).map(lambda hp: f"{hp[0]}:{hp[1]}" if hp[1] else hp[0]),
                     min_size=1, max_size=3).map(",".join)
    path = st.lists(PIECE, max_size=3).map(lambda parts: "/" + "/".join(parts) if parts else "")
    return st.builds(lambda s, u, h, p, q: f"{s}://{u}{h}{p}{q}", st.sampled_from(schemes), userinfo, hosts, path,
                     _query(keys))


REDIS_URIS = _uri(["redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "Redis", "http", ""],
                  REDIS_QUERY_KEYS) | st.text(max_size=30)
MONGODB_URIS = _uri(["mongodb", "MongoDB", "mongo", "redis", ""], MONGODB_QUERY_KEYS) | st.text(max_size=30)


def assert_refused_clearly(exc: ConnectionsError, option: str, uri: str) -> None:
    message = str(exc)
    assert f"--{option}" in message and repr(uri) in message, message


@HOSTILE
@given(uri=REDIS_URIS)
@example(uri="redis://[::1").via("found by hypothesis: urlparse's ValueError 'Invalid IPv6 URL'")
@example(uri="redis+sentinel://h:1/s?socket_timeout=x").via("found by hypothesis: float('x') ValueError")
@example(uri="redis+sentinel://h:1/s?socket_timeout=-1").via("found by hypothesis: a negative timeout")
@example(uri="redis://h:1/0?max_connections=0")
@example(uri="redis://h:1/0?unknown=1").via("found by hypothesis: redis-py's TypeError at first use")
@example(uri="redis://h:99999/0").via("found by hypothesis: a port out of range, retried as an outage")
@example(uri="redis+sentinel://:%zz@h:99999/s").via("found by hypothesis: a port out of range")
def test_any_redis_uri(uri):
    try:
        client = make_redis(uri, "redis", 10)
    except ConnectionsError as exc:
        assert_refused_clearly(exc, "redis", uri)
        return
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    pool.connection_class(**pool.connection_kwargs)  # a connection can be made (it connects on first use)
    pool.disconnect()


@HOSTILE
@given(uri=REDIS_URIS.filter(lambda u: "sentinel" in u) | _uri(["redis+sentinel"], REDIS_QUERY_KEYS))
def test_any_sentinel_uri(uri):
    try:
        spec = parse_sentinel_uri(uri, "redis_cache")
    except ConnectionsError as exc:
        assert_refused_clearly(exc, "redis_cache", uri)
        return
    assert spec["service"] and all(0 < port < 65536 for _, port in spec["sentinels"])
    assert spec["socket_timeout"] is None or spec["socket_timeout"] > 0


@pytest.mark.filterwarnings("error")
@HOSTILE
@given(uri=MONGODB_URIS.filter(lambda u: "+srv" not in u))
@example(uri="mongodb://h/a b").via("a database name pymongo refuses")
@example(uri="mongodb://h/a\"b")
@example(uri="mongodb://h/%00").via("found by hypothesis: pymongo's InvalidName")
@example(uri="mongodb://h/db?tls=x").via("found by hypothesis: pymongo ignored the option, with a UserWarning")
@example(uri="mongodb://h/db?replicaset=a&replicaSet=b")
def test_any_mongodb_uri(uri):
    try:
        db = make_mongodb(uri, "mongodb_jobs")
    except ConnectionsError as exc:
        assert_refused_clearly(exc, "mongodb_jobs", uri)
        return
    try:
        assert isinstance(db, pymongo.database.Database) and db.name
    finally:
        db.client.close()


@pytest.mark.parametrize("value", [None, 6379, b"redis://h", ["redis://h"]])
def test_a_uri_that_is_not_text(value: Any):
    with pytest.raises(ConnectionsError, match="--redis"):
        make_redis(value, "redis")
    with pytest.raises(ConnectionsError, match="--mongodb_jobs"):
        make_mongodb(value, "mongodb_jobs")
