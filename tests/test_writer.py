"""The batching status writer: coalescing, transition guard, acknowledgement after the write, outages."""

from __future__ import annotations

import pymongo
import pymongo.errors
import pytest
import redis

from mrq import status as st
from mrq.broker import Broker
from mrq.job import Outcome, utcnow
from mrq.writer import StatusWriter


def _queued(db, n):
    now = utcnow()
    ids = db["mrq_jobs"].insert_many([{"status": "queued", "queue": "q", "path": "p.t", "datequeued": now}
                                      for _ in range(n)]).inserted_ids
    return ids


@pytest.fixture
def parts(mrq_urls):
    client = pymongo.MongoClient(mrq_urls.mongodb)
    db = client.get_default_database()
    r = redis.Redis.from_url(mrq_urls.redis)
    broker = Broker(r, "w")
    yield db, broker
    client.close()
    r.close()


def test_started_and_end_coalesce_into_one_update_then_ack(parts):
    db, broker = parts
    ids = _queued(db, 3)
    broker.push("q", [str(i) for i in ids])
    broker.dequeue("worker", ["q"], 3)
    seen = []
    writer = StatusWriter(db["mrq_jobs"], broker, 0.1, on_written=seen.extend)
    for i in ids:
        writer.started(i, {"status": st.STARTED, "worker": "worker"})
    writer.finished(ids[0], Outcome(st.SUCCESS, set={"status": st.SUCCESS, "result": 1}))
    writer.finished(ids[1], Outcome(st.RETRY, set={"status": st.RETRY}, delayed=("q", 0.0)))
    assert len(broker.inflight()) == 3
    assert writer.flush()
    assert writer.written == 3  # one update per job
    docs = {d["_id"]: d for d in db["mrq_jobs"].find()}
    assert [docs[i]["status"] for i in ids] == ["success", "retry", "started"]
    assert docs[ids[0]]["worker"] == "worker" and docs[ids[0]]["result"] == 1
    assert [r.job_id for r in broker.inflight()] == [str(ids[2])]  # the running one stays in flight
    assert broker.sizes(["q"]) == {"q": (0, 1)}
    assert {s for _, s, _ in seen} == {"success", "retry", "started"}


def test_a_final_status_is_never_overwritten(parts):
    db, broker = parts
    (job_id,) = _queued(db, 1)
    db["mrq_jobs"].update_one({"_id": job_id}, {"$set": {"status": "cancel"}})
    seen = []
    writer = StatusWriter(db["mrq_jobs"], broker, 0.1, on_written=seen.extend)
    writer.finished(job_id, Outcome(st.SUCCESS, set={"status": st.SUCCESS, "result": 1}))
    assert writer.flush()
    assert db["mrq_jobs"].find_one({"_id": job_id})["status"] == "cancel"
    assert writer.refused == 1 and seen == []


def test_outage_keeps_the_batch_until_it_is_stored(mongodb_restartable, parts):
    _, broker = parts
    client = pymongo.MongoClient(mongodb_restartable.uri("w"), serverSelectionTimeoutMS=300)
    db = client.get_default_database()
    ids = _queued(db, 2)
    broker.push("q", [str(i) for i in ids])
    broker.dequeue("worker", ["q"], 2)
    writer = StatusWriter(db["mrq_jobs"], broker, 0.05)
    for i in ids:
        writer.finished(i, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
    mongodb_restartable.stop()
    assert writer.flush_once() is False
    assert writer.errors == 1 and len(writer) == 3  # two statuses + their acknowledgement
    assert len(broker.inflight()) == 2  # nothing acknowledged without its status
    mongodb_restartable.start()
    assert writer.flush(timeout=30)
    assert {d["status"] for d in db["mrq_jobs"].find()} == {"success"}
    assert broker.inflight() == []
    client.close()


def test_wait_for_room_blocks_until_the_backlog_is_written(parts):
    import gevent

    db, broker = parts
    ids = _queued(db, 30)
    writer = StatusWriter(db["mrq_jobs"], broker, 5.0)  # a long interval: only wait_for_room flushes
    for i in ids:
        writer.finished(i, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
    loop = gevent.spawn(writer.run)
    try:
        with gevent.Timeout(10):
            writer.wait_for_room(10)
        assert len(writer._pending) <= 10
        assert db["mrq_jobs"].count_documents({"status": "success"}) == 30
    finally:
        loop.kill()


class _Faulty:
    """The real collection, with faults injected into chosen calls (a replica-set election, a slow server)."""

    def __init__(self, collection) -> None:
        self.collection = collection
        self.fail_find = 0
        self.slow_write = 0.0
        self.during_write = None  # called inside bulk_write, before the write (a job ending meanwhile)
        self.fail_write = 0       # then the write fails (after during_write)

    def find(self, *args, **kwargs):
        if self.fail_find:
            self.fail_find -= 1
            raise pymongo.errors.AutoReconnect("not primary (election)")
        return self.collection.find(*args, **kwargs)

    def bulk_write(self, *args, **kwargs):
        if self.slow_write:
            import gevent
            gevent.sleep(self.slow_write)
        if self.during_write is not None:
            self.during_write()
            self.during_write = None
        if self.fail_write:
            self.fail_write -= 1
            raise pymongo.errors.AutoReconnect("connection reset during the write")
        return self.collection.bulk_write(*args, **kwargs)


def test_a_failed_check_of_refused_writes_loses_nothing(parts):
    """An update that matches nothing (job cancelled meanwhile) makes the writer check which ones were refused;
    when that find fails the batch stays stored and acknowledged, the check is retried, the writer goes on."""
    import gevent

    db, broker = parts
    cancelled, ok, later = _queued(db, 3)
    broker.push("q", [str(i) for i in (cancelled, ok, later)])
    broker.dequeue("worker", ["q"], 3)
    db["mrq_jobs"].update_one({"_id": cancelled}, {"$set": {"status": "cancel"}})
    faulty = _Faulty(db["mrq_jobs"])
    faulty.fail_find = 1
    seen = []
    writer = StatusWriter(faulty, broker, 0.02, on_written=seen.extend)
    loop = gevent.spawn(writer.run)
    try:
        writer.finished(cancelled, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
        writer.finished(ok, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
        with gevent.Timeout(10):
            while len(broker.inflight()) > 1:
                gevent.sleep(0.02)
        assert faulty.fail_find == 0 and writer.errors >= 1
        writer.finished(later, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))  # the writer is still alive
        with gevent.Timeout(10):
            while broker.inflight():
                gevent.sleep(0.02)
        assert not loop.dead
        assert sorted(str(i) for i, _, _ in seen) == sorted([str(ok), str(later)])  # the refused one: not reported
        assert writer.refused == 1
        assert db["mrq_jobs"].find_one({"_id": cancelled})["status"] == "cancel"
    finally:
        loop.kill()


def test_a_job_that_ends_during_a_write_is_acknowledged_only_with_its_own_write(parts):
    """Job b ends while the batch of job a is being written: a is acknowledged, b stays in flight until the next
    write stores its status (never acknowledged with another job's write)."""
    db, broker = parts
    a, b = _queued(db, 2)
    broker.push("q", [str(a), str(b)])
    broker.dequeue("worker", ["q"], 2)
    faulty = _Faulty(db["mrq_jobs"])
    writer = StatusWriter(faulty, broker, 0.05)
    writer.finished(a, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
    faulty.during_write = lambda: writer.finished(b, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
    assert writer.flush_once() is True
    assert [r.job_id for r in broker.inflight()] == [str(b)]
    assert db["mrq_jobs"].find_one({"_id": b})["status"] == "queued"
    assert writer.flush()
    assert broker.inflight() == [] and db["mrq_jobs"].count_documents({"status": "success"}) == 2


def test_a_job_that_ends_during_a_failed_write_keeps_its_end(parts):
    """The batch holding a job's "started" fails while the job ends: the retried write stores the end (newer
    changes win over the restored batch), never "started" with the job acknowledged."""
    import gevent

    db, broker = parts
    (job_id,) = _queued(db, 1)
    broker.push("q", [str(job_id)])
    broker.dequeue("worker", ["q"], 1)
    faulty = _Faulty(db["mrq_jobs"])
    writer = StatusWriter(faulty, broker, 0.01)
    writer.started(job_id, {"status": st.STARTED, "worker": "worker"})
    gevent.sleep(0.05)  # the "started" status is older than one interval: it goes with the next write
    faulty.during_write = lambda: writer.finished(job_id, Outcome(st.SUCCESS, set={"status": st.SUCCESS,
                                                                                   "result": 1}))
    faulty.fail_write = 1
    assert writer.flush_once() is False
    assert len(broker.inflight()) == 1
    assert writer.flush()
    doc = db["mrq_jobs"].find_one({"_id": job_id})
    assert (doc["status"], doc["result"], doc["worker"]) == ("success", 1, "worker")
    assert broker.inflight() == []


def test_a_raising_status_callback_never_keeps_jobs_in_flight(parts):
    db, broker = parts
    (job_id,) = _queued(db, 1)
    broker.push("q", [str(job_id)])
    broker.dequeue("worker", ["q"], 1)

    def broken(written):
        raise RuntimeError("a broken callback")

    writer = StatusWriter(db["mrq_jobs"], broker, 0.05, on_written=broken)
    writer.finished(job_id, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
    assert writer.flush_once() is True
    assert broker.inflight() == [] and db["mrq_jobs"].find_one({"_id": job_id})["status"] == "success"


def test_flush_timeout_during_a_write_keeps_the_batch_and_says_so(parts):
    db, broker = parts
    ids = _queued(db, 2)
    faulty = _Faulty(db["mrq_jobs"])
    faulty.slow_write = 1.0
    writer = StatusWriter(faulty, broker, 0.05)
    for i in ids:
        writer.finished(i, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
    assert writer.flush(timeout=0.2) is False  # the timeout fired inside bulk_write
    assert len(writer) == 3  # two statuses and their acknowledgement, kept
    faulty.slow_write = 0
    assert writer.flush(timeout=10) is True
    assert db["mrq_jobs"].count_documents({"status": "success"}) == 2


def test_the_flush_loop_survives_an_unexpected_error(parts, monkeypatch):
    import gevent

    db, broker = parts
    (job_id,) = _queued(db, 1)
    writer = StatusWriter(db["mrq_jobs"], broker, 0.02)
    calls = []
    real = writer._flush_once

    def flaky(everything=False):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(everything)

    monkeypatch.setattr(writer, "_flush_once", flaky)
    loop = gevent.spawn(writer.run)
    try:
        writer.finished(job_id, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
        with gevent.Timeout(10):
            while db["mrq_jobs"].find_one({"_id": job_id})["status"] != "success":
                gevent.sleep(0.02)
        assert not loop.dead and writer.errors == 1
    finally:
        loop.kill()


def test_a_job_end_is_written_at_once_and_a_started_status_waits_to_be_merged(parts):
    """The window in which a SIGKILLed worker would leave a finished job to run again is one write, not one
    interval; a "started" status still waits up to an interval, to become one update with a quick job's end."""
    import gevent

    db, broker = parts
    ended, running = _queued(db, 2)
    writer = StatusWriter(db["mrq_jobs"], broker, 5.0)  # a long interval: only a job's end triggers a write
    loop = gevent.spawn(writer.run)
    try:
        writer.started(running, {"status": st.STARTED})
        writer.started(ended, {"status": st.STARTED})
        writer.finished(ended, Outcome(st.SUCCESS, set={"status": st.SUCCESS}))
        with gevent.Timeout(2):
            while db["mrq_jobs"].find_one({"_id": ended})["status"] != "success":
                gevent.sleep(0.01)
        assert db["mrq_jobs"].find_one({"_id": running})["status"] == "queued"  # not written separately yet
        assert writer.written == 1
    finally:
        loop.kill()
