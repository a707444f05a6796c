"""The Redis side, script by script, against a real Redis."""

from __future__ import annotations

import time

import pytest
import redis

from mrq.broker import AckBatch, Broker, InFlight


@pytest.fixture
def broker(mrq_urls):
    client = redis.Redis.from_url(mrq_urls.redis)
    yield Broker(client, "test")
    client.close()


def test_keys_share_one_cluster_slot(broker):
    assert broker.queue_key("q") == "{test}:q:q"
    assert broker.delayed_key("a/b") == "{test}:d:a/b"
    assert broker.notify_keys("a/b") == ["{test}:n:a/b", "{test}:n:a/"]
    assert broker.inflight_key.startswith("{test}:")


def test_dequeue_pops_in_priority_order_and_records_in_flight(broker):
    broker.push("low", ["l1", "l2"])
    broker.push("high", ["h1"])
    popped = broker.dequeue("w1", ["high", "low"], 2)
    assert popped == [("high", "h1"), ("low", "l1")]
    records = {r.job_id: r for r in broker.inflight()}
    assert set(records) == {"h1", "l1"}
    assert records["h1"].worker_id == "w1" and records["h1"].queue == "high"
    assert abs(records["h1"].since - time.time()) < 5
    assert broker.sizes(["low", "high"]) == {"low": (1, 0), "high": (0, 0)}
    assert broker.known_queues() == ["low"]  # 'high' was emptied: forgotten


def test_emptied_queues_are_forgotten_and_come_back_with_their_next_id(broker):
    """Nothing grows forever: a queue with neither waiting nor delayed ids leaves the known set and its notify
    list is deleted, in the dequeue that empties it; each way of putting an id back adds it again."""
    r = broker.redis
    for i in range(50):
        broker.push(f"sub/{i}", [f"id{i}"])
    broker.push("kept", ["k1", "k2"])
    broker.push("later", ["d1"], delay=60)
    queues = [f"sub/{i}" for i in range(50)] + ["kept", "later"]
    assert len(broker.dequeue("w", queues, 51)) == 51
    assert broker.known_queues() == ["kept", "later"]  # 'kept' has k2 left, 'later' a delayed id
    assert r.exists(*[broker.key("n", f"sub/{i}") for i in range(50)]) == 0
    assert r.exists(broker.key("n", "sub/")) == 1  # the root's wake-up list is shared: kept
    # Back by every path that puts ids in Redis.
    from mrq.broker import AckBatch, InFlight
    broker.ack(AckBatch(done=["id0"], requeue=[("sub/0", "id0")]))
    broker.requeue_inflight([InFlight("id1", "w", 0, "sub/1")], "w")
    broker.ack(AckBatch(done=["id2"], delayed=[("sub/2", "id2", time.time() + 60)]))
    broker.push_unique("sub/3", [("new3", 0.0, True)])
    assert set(broker.known_queues()) >= {"sub/0", "sub/1", "sub/2", "sub/3"}
    # A paused queue keeps its ids, so it stays known.
    broker.pause("kept")
    broker.dequeue("w", ["kept"], 5)
    assert "kept" in broker.known_queues()


def test_parallel_share(broker):
    broker.push("a", ["a1", "a2", "a3"])
    broker.push("b", ["b1", "b2", "b3"])
    assert broker.dequeue("w", ["a", "b"], 4, per_queue=2) == [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")]


def test_pause_queue_and_subqueues(broker):
    broker.push("p", ["1"])
    broker.push("root/sub", ["2"])
    broker.pause("p")
    broker.pause("root/")
    assert broker.dequeue("w", ["p", "root/sub"], 10) == []
    broker.resume("root/")
    assert broker.dequeue("w", ["p", "root/sub"], 10) == [("root/sub", "2")]
    assert broker.paused() == {"p"}


def test_delayed_ids_are_promoted_by_the_dequeue(broker):
    broker.push("q", ["later"], delay=0.3)
    assert broker.dequeue("w", ["q"], 10) == []
    assert broker.sizes(["q"]) == {"q": (0, 1)}
    time.sleep(0.35)
    assert broker.dequeue("w", ["q"], 10) == [("q", "later")]


def test_ack_batch(broker):
    broker.push("q", ["1", "2", "3", "4"])
    broker.dequeue("w", ["q"], 4)
    batch = AckBatch(done=["1", "2", "3"], delayed=[("q", "2", time.time() + 100)], requeue=[("q", "3")])
    broker.ack(batch)
    assert [r.job_id for r in broker.inflight()] == ["4"]
    assert broker.list_ids("q") == ["3"]
    assert broker.sizes(["q"]) == {"q": (1, 1)}


def test_requeue_in_flight_only_for_the_expected_worker(broker):
    broker.push("q", ["1", "2"])
    broker.dequeue("w1", ["q"], 2)
    recs = broker.inflight()
    assert broker.requeue_inflight(recs, "other") == []
    assert broker.requeue_inflight([r for r in recs if r.job_id == "2"], "w1") == ["2"]
    assert broker.requeue_inflight([InFlight("1", "", 0, "q")]) == ["1"]
    assert broker.list_ids("q") == ["1", "2"]
    assert broker.inflight() == []


def test_heartbeat_kill_requests_and_liveness(broker):
    broker.push("q", ["job"])
    broker.dequeue("w1", ["q"], 1)
    assert broker.heartbeat("w1", ttl=0.3) == []
    assert broker.alive(["w1", "w2"]) == {"w1": True, "w2": False}
    assert broker.request_kill(["job", "unknown"]) == ["job"]
    assert 0 < broker.redis.ttl(broker.key("kill", "w1")) <= 3600  # the kill set of a dead worker goes away
    assert broker.heartbeat("w1", ttl=0.3) == ["job"]
    assert broker.heartbeat("w1", ttl=0.3) == []
    time.sleep(0.4)
    assert broker.alive(["w1"]) == {"w1": False}


def test_semaphore(broker):
    assert broker.acquire("t", "a", 2, ttl=10)
    assert broker.acquire("t", "b", 2, ttl=0.2)
    assert broker.acquire("t", "a", 2, ttl=10)  # a holder asking again keeps its slot
    assert not broker.acquire("t", "c", 2, ttl=10)
    time.sleep(0.25)  # b's slot expired
    assert broker.acquire("t", "c", 2, ttl=10)
    broker.ack(AckBatch(release=[("t", "a")]))
    assert broker.acquire("t", "d", 2, ttl=10)


def test_wait_wakes_on_push(broker):
    t0 = time.monotonic()
    assert broker.wait(["q"], 0.2) is None
    assert time.monotonic() - t0 >= 0.15
    broker.push("q", ["1"])
    assert broker.wait(["q"], 5) == "q"
    broker.push("root/sub", ["2"])
    assert broker.wait(["other", "root/"], 5) == "root/"  # a push to a subqueue wakes the root's workers


def test_remove_and_empty(broker):
    broker.push("q", ["1", "2", "3"])
    assert broker.remove("q", ["2"]) == 1
    assert broker.list_ids("q") == ["1", "3"]
    broker.empty("q")
    assert broker.sizes(["q"]) == {"q": (0, 0)}


def test_push_unique(broker):
    broker.push("q", ["a"])
    broker.push("q", ["d"], delay=100)
    broker.push("q", ["f"])
    broker.dequeue("w", ["q"], 1)  # 'a' is now in flight; 'f' waits in the list
    assert broker.push_unique("q", [("a", 0, True), ("d", 0, True), ("f", 0, True), ("n", 0, True),
                                    ("n", 0, True)]) == ["n"]
    assert broker.list_ids("q") == ["f", "n"]
    assert broker.push_unique("q", [("h", 0, False)], where="head") == ["h"]
    assert broker.push_unique("q", [("z", time.time() + 50, True)], where="delayed") == ["z"]
    assert broker.list_ids("q") == ["h", "f", "n"]
    assert broker.sizes(["q"]) == {"q": (3, 2)}


# -- max_concurrency: waiting jobs, stale waiters, raw jobs parked, slots of jobs that do not run

def _waiters(broker, path):
    return [(m.decode(), s) for m, s in broker.redis.zrange(broker.key("semwait", path), 0, -1, withscores=True)]


def test_a_job_deferred_again_and_again_has_one_waiting_entry(broker):
    """Each fallback that runs a waiting job finds the slot still taken: the job waits again, under the same entry
    (a list of entries, one per fallback, made a later release promote it out of a retry's delay)."""
    assert broker.acquire("t", "holder", 1, ttl=60)
    broker.push("q", ["j"])
    for i in range(5):  # its fallback fires: it is popped and waits again
        if i:
            broker.redis.zadd(broker.delayed_key("q"), {"j": 0})
        assert broker.dequeue("w", ["q"], 1) == [("q", "j")]
        assert not broker.acquire("t", "j", 1, ttl=60, defer_to="q", defer_for=30)
    assert [m for m, _ in _waiters(broker, "t")] == ["q j"]
    assert broker.inflight() == []


def test_a_stale_waiter_does_not_cut_a_retry_delay(broker):
    """A job run by its fallback (twice: the slot was still taken the first time), that then ran and was retried
    with a 60 s delay, stays delayed when a slot of its task is released later: a release wakes only jobs still
    waiting for their deferral (a leftover entry used to promote the retry out of its delay)."""
    assert broker.acquire("t", "holder", 1, ttl=0.3)  # its worker dies: the slot expires, nobody releases it
    broker.push("q", ["j"])
    assert broker.dequeue("w", ["q"], 1) == [("q", "j")]
    assert not broker.acquire("t", "j", 1, ttl=60, defer_to="q", defer_for=30)
    broker.redis.zadd(broker.delayed_key("q"), {"j": 0})  # the fallback is due
    assert broker.dequeue("w", ["q"], 1) == [("q", "j")]
    assert not broker.acquire("t", "j", 1, ttl=60, defer_to="q", defer_for=30)
    time.sleep(0.35)
    broker.redis.zadd(broker.delayed_key("q"), {"j": 0})
    assert broker.dequeue("w", ["q"], 1) == [("q", "j")]
    assert broker.acquire("t", "j", 1, ttl=60, defer_to="q")  # it runs...
    retry_due = time.time() + 60
    broker.ack(AckBatch(done=["j"], delayed=[("q", "j", retry_due)], release=[("t", "j")]))  # ...retry in 60 s
    for job in ("other", "another"):
        assert broker.acquire("t", job, 1, ttl=60)
        broker.ack(AckBatch(release=[("t", job)]))
    assert broker.list_ids("q") == []
    assert broker.redis.zscore(broker.delayed_key("q"), "j") == retry_due
    assert _waiters(broker, "t") == []


def test_a_release_wakes_a_waiter_whatever_its_fallback(broker):
    assert broker.acquire("t", "holder", 1, ttl=60)
    broker.push("q", ["a", "b"])
    broker.dequeue("w", ["q"], 2)
    assert not broker.acquire("t", "a", 1, ttl=60, defer_to="q", defer_for=300)
    assert not broker.acquire("t", "b", 1, ttl=60, defer_to="q", defer_for=400)
    assert broker.sizes(["q"]) == {"q": (0, 2)}
    broker.ack(AckBatch(done=["holder"], release=[("t", "holder")]))
    assert broker.list_ids("q") == ["a"] and broker.sizes(["q"]) == {"q": (1, 1)}


@pytest.mark.parametrize("queue, scores", [("x_raw", None), ("x_set", None), ("x_sorted_set", {"p": 5.0}),
                                           ("x_timed_set", {"p": 1.0})])
def test_a_raw_job_waiting_for_a_slot_is_parked_not_popped_again(broker, queue, scores):
    """A raw job that finds no free slot waits in its queue's delayed zset (no pop again until a slot frees or its
    fallback is due), keeps its id, and comes back first, with its payload and score."""
    assert broker.acquire("t", "holder", 1, ttl=60)
    broker.push_raw(queue, ["p"], scores)
    (item,) = broker.dequeue_all("w", [queue], 1)[1]
    parked = broker.parked_raw(item.job_id, item.payload, item.score)
    assert not broker.acquire("t", item.job_id, 1, ttl=60, defer_to=queue, parked=parked, defer_for=300)
    assert broker.inflight() == []
    for _ in range(3):
        assert broker.dequeue_all("w", [queue], 10) == ([], [])  # parked: not popped again
    assert broker.sizes([queue])[queue] == (0, 1)
    assert queue in broker.known_queues()
    broker.ack(AckBatch(release=[("t", "holder")]))  # a slot frees: the parked job is woken
    (again,) = broker.dequeue_all("w", [queue], 10)[1]
    assert (again.job_id, again.payload, again.score) == (item.job_id, "p", item.score)
    assert broker.acquire("t", again.job_id, 1, ttl=60, defer_to=queue, parked=parked)
    assert _waiters(broker, "t") == []


def test_requeueing_in_flight_jobs_frees_their_slots_and_wakes_waiters(broker):
    """A job of a dead worker (or one its worker put back) no longer runs: its slot is freed at once (it used to
    be held for the job's timeout + 30 s), and a job waiting for it is woken."""
    broker.push("q", ["dead", "waiting"])
    broker.dequeue("w1", ["q"], 1)
    assert broker.acquire("t", "dead", 1, ttl=3600)
    broker.dequeue("w2", ["q"], 1)
    assert not broker.acquire("t", "waiting", 1, ttl=3600, defer_to="q", defer_for=300)
    assert broker.requeue_inflight(broker.inflight("w1"), "w1") == ["dead"]
    assert broker.redis.zcard(broker.key("sem", "t")) == 0
    assert broker.redis.hlen(broker.key("semheld")) == 0
    assert broker.list_ids("q") == ["waiting", "dead"]


def test_a_dropped_poison_job_frees_its_slot(broker):
    broker.push("q", ["poison"])
    broker.dequeue("w1", ["q"], 1)
    assert broker.acquire("t", "poison", 1, ttl=3600)
    assert broker.requeue_inflight(broker.inflight("w1"), "w1", drop=["poison"]) == ["poison"]
    assert broker.acquire("t", "next", 1, ttl=3600)
