"""The cleaning passes run in the test process against real servers: what they find and what they push."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

from bson import ObjectId
from mrq.context import connections, get_broker
from mrq.job import Job, queue_job, queue_jobs, utcnow

from mrq_cleaning.core import Cleaner, push_if_absent

T = "tests.tasks.general."


def _jobs():
    return connections.mongodb_jobs["mrq_jobs"]


def _doc(status, age, queue="default", **extra):
    then = utcnow() - datetime.timedelta(seconds=age)
    return {"_id": ObjectId(), "path": T + "Add", "params": {"a": 1, "b": age}, "queue": queue, "status": status,
            "datequeued": then, "dateupdated": then, "retry_count": 0, **extra}


def _cleaner(**config):
    """A cleaner that trusts heartbeats at once (the session's Redis has just started)."""
    from mrq.context import get_current_config

    return Cleaner(dict(get_current_config(), heartbeat_ttl=0, heartbeat_interval=0.1) | config)


def test_jobs_without_redis_entry_are_found_and_pushed_once(mrq_config):
    broker = get_broker()
    dead_worker = ObjectId()
    docs = {
        "old": _doc("queued", 60),
        "older": _doc("queued", 120),
        "fresh": _doc("queued", 1),                      # within the grace period: maybe being pushed now
        "interrupt": _doc("interrupt", 60),
        "retry": _doc("retry", 60, dateretry=utcnow() + datetime.timedelta(seconds=30)),
        "started_dead": _doc("started", 60, worker=dead_worker, datestarted=utcnow()),
        "delayed": _doc("queued", 60, queue="other", datedue=utcnow() + datetime.timedelta(seconds=60)),
        "final": _doc("success", 60),
    }
    _jobs().insert_many(list(docs.values()))
    in_redis = queue_jobs(T + "Add", [{"a": 0, "b": 0}] * 3)        # normal jobs: already in Redis
    _jobs().update_many({"_id": {"$in": in_redis}}, {"$set": {"dateupdated": utcnow() - datetime.timedelta(60)}})
    sid = {k: str(d["_id"]) for k, d in docs.items()}

    cleaner = _cleaner()
    counts = cleaner.lost_pass()
    assert counts == {"queued": 3, "interrupt": 1, "retry": 1, "started": 1}
    listed = broker.list_ids("default")
    # interrupted/started at the head, the normal jobs, then the lost queued ones in datequeued order
    assert listed[:2] in ([sid["interrupt"], sid["started_dead"]], [sid["started_dead"], sid["interrupt"]])
    assert listed[2:] == [str(i) for i in in_redis] + [sid["older"], sid["old"]]
    assert broker.redis.zscore(broker.delayed_key("default"), sid["retry"]) is not None
    assert broker.redis.zscore(broker.delayed_key("other"), sid["delayed"]) is not None
    statuses = {k: Job(d["_id"]).fetch().status for k, d in docs.items()}
    assert statuses == {"old": "queued", "older": "queued", "fresh": "queued", "interrupt": "queued",
                        "retry": "retry", "started_dead": "queued", "delayed": "queued", "final": "success"}
    assert cleaner.counters["requeued"] == 6

    # A second pass finds everything in Redis: nothing is pushed twice.
    assert cleaner.lost_pass() == {}
    assert sorted(broker.list_ids("default")) == sorted(listed)
    assert cleaner.counters["requeued"] == 6


def test_started_job_of_a_live_worker_is_left_alone(mrq_config):
    broker = get_broker()
    live = ObjectId()
    broker.heartbeat(str(live), 30)
    doc = _doc("started", 60, worker=live, datestarted=utcnow() - datetime.timedelta(seconds=60))
    _jobs().insert_one(doc)
    cleaner = _cleaner()
    assert cleaner.lost_pass() == {}
    assert cleaner.counters["skipped_alive"] == 1
    assert broker.list_ids("default") == []


def test_push_if_absent_is_atomic_and_checks_every_structure(mrq_config):
    broker = get_broker()
    ids = [str(ObjectId()) for _ in range(2500)]
    broker.push("q", ids[:1200])
    broker.push("q", ids[1200:1300], delay=60)
    broker.redis.hset(broker.inflight_key, ids[1300], "w 0 q")
    pushed = push_if_absent(broker, "q", [(i, 0, True) for i in ids + ids[:5]], "tail")
    assert pushed == ids[1301:]
    assert broker.list_ids("q") == ids[:1200] + ids[1301:]
    assert push_if_absent(broker, "q", [(i, 0, True) for i in ids], "head") == []
    head = [str(ObjectId()) for _ in range(1500)]
    assert push_if_absent(broker, "q", [(i, 0, False) for i in head], "head") == head
    assert broker.list_ids("q", 0, 1499) == head


def test_dead_worker_pass(mrq_config):
    broker = get_broker()
    dead, live = ObjectId(), ObjectId()
    broker.heartbeat(str(live), 30)
    a = queue_job(T + "Add", {"a": 1, "b": 1})
    b = queue_job(T + "Add", {"a": 1, "b": 2})
    assert broker.dequeue(str(dead), ["default"], 1) == [("default", str(a))]
    assert broker.dequeue(str(live), ["default"], 1) == [("default", str(b))]
    _jobs().update_one({"_id": a}, {"$set": {"status": "started", "worker": dead}})
    cleaner = _cleaner()
    assert cleaner.requeue_dead_workers() == 1
    assert broker.list_ids("default") == [str(a)]
    assert [r.job_id for r in broker.inflight()] == [str(b)]
    assert Job(a).fetch().status == "queued"
    assert cleaner.requeue_dead_workers() == 0


def test_pass_lock_and_interval(mrq_config):
    cleaner = _cleaner()
    calls = []
    assert cleaner.run_locked("x", lambda: calls.append(1) or "ran", interval=30) == "ran"
    assert cleaner.run_locked("x", lambda: calls.append(1), interval=30) is None   # ran recently
    with get_broker().redis.lock(get_broker().key("cleaning", "lock", "y"), timeout=5):
        assert cleaner.run_locked("y", lambda: calls.append(1)) is None          # held elsewhere
    assert calls == [1]
    assert cleaner.counters["pass_x"] == 1


def test_redis_settled_asks_the_cluster_node_of_mrqs_slot(mrq_redis_cluster, mrq_cluster_urls):
    """On a Redis Cluster, the Redis whose restart matters is the node that holds MRQ's keys (one slot): its
    uptime decides, not the uptime of the node redis-py sends a bare INFO to."""
    from mrq.context import setup_context
    from mrq.testing import wait_until

    setup_context(redis=mrq_cluster_urls.redis, mongodb_jobs=mrq_cluster_urls.mongodb)
    try:
        r = get_broker().redis
        for i in range(100):  # a prefix of this test's own whose slot is not on the node a bare INFO asks
            setup_context(redis=mrq_cluster_urls.redis, mongodb_jobs=mrq_cluster_urls.mongodb,
                          redis_prefix=f"{mrq_cluster_urls.prefix or 'mrq'}-{i}")
            r = get_broker().redis
            if r.get_node_from_key(get_broker().key("hb")).name != r.get_default_node().name:
                break
        slot = r.get_node_from_key(get_broker().key("hb"))
        assert slot.name != r.get_default_node().name  # else a bare INFO would ask it too
        others = [n for n in r.get_primaries() if n.name != slot.name]
        wait_until(lambda: min(r.info("server", target_nodes=n)["uptime_in_seconds"] for n in others) >= 6,
                   timeout=10, what="the other nodes up for 6 s")
        node = next(n for n in mrq_redis_cluster.nodes if n.port == slot.port)
        node.stop()
        node.start()
        mrq_redis_cluster.wait_ok()
        assert not _cleaner(heartbeat_ttl=2.5).redis_settled()  # settled once MRQ's node has been up 5 s
        assert _cleaner(heartbeat_ttl=0).redis_settled()
    finally:
        connections.reset()


def test_tasks_runnable_by_hand(mrq_urls, mrq_config, request):
    _jobs().insert_many([_doc("queued", 60), _doc("interrupt", 60)])
    env = dict(os.environ, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb)
    out = {}
    for task in ("RequeueLostJobs", "RequeueInterruptedJobs", "RequeueRetryJobs", "RequeueStartedJobs",
                 "RequeueDeadWorkerJobs"):
        proc = subprocess.run([sys.executable, "-m", "mrq.cli", "run", "mrq_cleaning." + task, '{"grace": 5}'],
                              env=env, cwd=str(request.config.rootpath), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out[task] = json.loads(proc.stdout)
    assert out["RequeueLostJobs"] == {"queued": 1}
    assert out["RequeueInterruptedJobs"] == {"interrupt": 1}
    assert out["RequeueRetryJobs"] == {}
    assert out["RequeueStartedJobs"] == {}
    assert out["RequeueDeadWorkerJobs"] == {"requeued": 0}
    assert get_broker().sizes(["default"])["default"] == (2, 0)


def test_a_pass_over_many_queued_jobs_is_cheap(mrq_config):
    """10,000 queued jobs, all in Redis: a lost pass checks them all and pushes nothing."""
    ids = queue_jobs(T + "Add", [{"a": i, "b": 0} for i in range(10_000)])
    _jobs().update_many({}, {"$set": {"dateupdated": utcnow() - datetime.timedelta(seconds=60)}})
    start = time.perf_counter()
    assert _cleaner().lost_pass() == {}
    elapsed = time.perf_counter() - start
    print(f"lost pass over {len(ids)} queued jobs: {elapsed * 1000:.0f} ms")
    assert elapsed < 20


def test_options_and_listing(mrq_urls, request):
    env = dict(os.environ, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb)
    run = [sys.executable, "-m", "mrq.cli", "worker", "--plugins", "cleaning"]
    proc = subprocess.run([*run, "--list-plugins"], env=env, capture_output=True, text=True, timeout=60)
    assert "cleaning 1.0.0 [enabled] (mrq_cleaning.plugin)" in proc.stdout
    assert "mrq_worker_services" in proc.stdout
    proc = subprocess.run([*run, "--cleaning_grace", "-1"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cleaning_grace" in proc.stderr


def test_started_pass_takes_jobs_past_their_timeout_unless_alive(mrq_config):
    broker = get_broker()
    live, dead = ObjectId(), ObjectId()
    broker.heartbeat(str(live), 30)
    long_ago = utcnow() - datetime.timedelta(seconds=60)
    stuck_dead = _doc("started", 60, worker=dead, datestarted=long_ago)
    stuck_alive = _doc("started", 60, worker=live, datestarted=long_ago)
    recent = _doc("started", 60, worker=dead, datestarted=utcnow() - datetime.timedelta(seconds=20))
    _jobs().insert_many([stuck_dead, stuck_alive, recent])
    cleaner = _cleaner(default_job_timeout=30, cleaning_timeout_margin=5)
    assert cleaner.started_pass() == {"started": 1}
    assert broker.list_ids("default") == [str(stuck_dead["_id"])]
    assert [Job(d["_id"]).fetch().status for d in (stuck_dead, stuck_alive, recent)] == [
        "queued", "started", "started"]
    assert cleaner.counters["skipped_alive"] == 1
