"""list_jobs: the jobs of any filter, newest first, read by id windows, equal to a plain sorted query."""

from __future__ import annotations

import datetime as dt
import json
import os
import random

import pytest
from bson import ObjectId
from mrq.context import connections

from mrq_dashboard.indexes import ensure_dashboard_indexes
from mrq_dashboard.jobquery import WINDOWS, expand_queue_prefixes, list_jobs

NOW = dt.datetime(2026, 6, 1, 12, 0, 0)


def _id_at(when: dt.datetime) -> ObjectId:
    return ObjectId(int(when.replace(tzinfo=dt.UTC).timestamp()).to_bytes(4, "big") + os.urandom(8))


@pytest.fixture
def jobs(mrq_config):
    """400 jobs over two years, denser recently, in several queues, paths, statuses; and the indexes."""
    rng = random.Random(7)
    docs = []
    for i in range(400):
        age = dt.timedelta(seconds=rng.choice([60, 900, 5000, 30000, 200000, 10**6, 10**7, 5 * 10**7]) * rng.random())
        status = rng.choice(["success"] * 5 + ["failed", "queued", "retry", "cancel"])
        doc = {"_id": _id_at(NOW - age), "path": rng.choice(["t.A", "t.B", "io.C"]), "status": status,
               "queue": rng.choice(["default", "crawl/a", "crawl/b", "low"]), "params": {"n": i % 7},
               "dateupdated": NOW - age}
        if status == "failed":
            doc["exceptiontype"] = rng.choice(["KeyError", "ValueError"])
        if status != "queued":
            doc["worker"] = rng.choice([ObjectId("6b0000000000000000000001"), ObjectId("6b0000000000000000000002")])
        docs.append(doc)
    collection = connections.mongodb_jobs["mrq_jobs"]
    collection.insert_many(docs)
    ensure_dashboard_indexes(connections.mongodb_jobs)
    return collection


FILTERS = [
    {}, {"status": "failed"}, {"status": ["failed", "retry"]}, {"queue": "low"}, {"queue": ["crawl/a", "crawl/b"]},
    {"queue": "crawl/"}, {"path": "io.*"}, {"path": "t.A", "status": "success"}, {"exceptiontype": "KeyError"},
    {"worker": "6b0000000000000000000002", "queue": "default"}, {"params": json.dumps({"n": 3})},
    {"params": {"n": 3}, "status": "success", "queue": "crawl/"},
    {"after": (NOW - dt.timedelta(days=3)).isoformat(), "status": "success"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_same_jobs_as_a_plain_sorted_query(jobs, filters):
    from mrq.actions import build_query

    expected = [d["_id"] for d in jobs.find(build_query(filters), {"_id": 1}).sort("_id", -1)]
    for skip, limit in ((0, 10), (0, 50), (7, 13), (40, 100), (0, 1000)):
        docs, more = list_jobs(jobs, filters, skip=skip, limit=limit, now=NOW)
        assert [d["_id"] for d in docs] == expected[skip:skip + limit], (skip, limit)
        assert more == (len(expected) > skip + limit)
    known = expand_queue_prefixes(filters, ["crawl/a", "crawl/b", "default", "low"])
    docs, _ = list_jobs(jobs, known, limit=1000, now=NOW)
    assert [d["_id"] for d in docs] == expected
    for favoured in ("queue", "status", "path", "worker", "exceptiontype"):  # whichever equality drives the read
        docs, _ = list_jobs(jobs, known, limit=60, now=NOW, estimates={favoured: 0})
        assert [d["_id"] for d in docs] == expected[:60], favoured


def test_cursor_pages_through_everything(jobs):
    seen, cursor = [], None
    while True:
        docs, more = list_jobs(jobs, {"status": ["success", "failed"]}, limit=37, before=cursor, now=NOW)
        seen += [d["_id"] for d in docs]
        if not more:
            break
        cursor = docs[-1]["_id"]
    assert seen == [d["_id"] for d in jobs.find({"status": {"$in": ["success", "failed"]}}).sort("_id", -1)]


def test_projection_and_the_oldest_window(jobs):
    ancient = jobs.insert_one({"_id": _id_at(NOW - dt.timedelta(days=3000)), "status": "failed", "queue": "x"})
    docs, more = list_jobs(jobs, {"queue": "x"}, limit=5, projection=["status"], now=NOW)
    assert docs == [{"_id": ancient.inserted_id, "status": "failed"}] and not more   # beyond every window
    assert WINDOWS[-1] is None


def test_expand_queue_prefixes():
    expanded = expand_queue_prefixes({"queue": "crawl/"}, ["crawl/a", "crawl/b", "crawler"])
    assert expanded == {"queue": ["crawl/a", "crawl/b"]}
    assert expand_queue_prefixes({"queue": ["low", "x/"]}, ["low"]) == {"queue": ["low", "x/"]}   # unknown: kept
    assert expand_queue_prefixes({"status": "failed"}, []) == {"status": "failed"}


def test_matches_agrees_with_the_server_on_tricky_documents(mrq_config):
    """Arrays, booleans against numbers, null against missing, numbers of both kinds, nested keys, dates."""
    from mrq.actions import build_query

    from mrq_dashboard.jobquery import matches

    collection = connections.mongodb_jobs["tricky"]
    docs = [{"params": {"n": 1}}, {"params": {"n": 1.0}}, {"params": {"n": True}}, {"params": {"n": [1, 2]}},
            {"params": {"n": [[1], 3]}}, {"params": {"n": None}}, {"params": {}}, {"params": {"n": "1"}},
            {"params": {"a": {"b": "x"}}}, {"params": {"a": [{"b": "x"}, {"b": "y"}]}},
            {"path": "tasks.io.Fetch", "queue": "crawl/a", "dateupdated": NOW},
            {"path": "tasks.iox.Fetch", "queue": "crawl", "dateupdated": NOW - dt.timedelta(days=1)}]
    collection.insert_many(docs)
    filters = [{"params": {"n": 1}}, {"params": {"n": True}}, {"params": {"n": None}}, {"params": {"n": "1"}},
               {"params": {"n": 2}}, {"params": {"a.b": "y"}}, {"params": {"a.b": None}}, {"path": "tasks.io.*"},
               {"queue": ["crawl/", "crawl"]}, {"after": (NOW - dt.timedelta(hours=1)).isoformat()},
               {"before": NOW.isoformat(), "queue": "crawl"}, {"path": ["x*", "tasks.iox.Fetch"], "queue": "crawl/"}]
    for filters_ in filters:
        query = build_query(filters_)
        expected = {d["_id"] for d in collection.find(query)}
        assert {d["_id"] for d in collection.find() if matches(d, query)} == expected, filters_
