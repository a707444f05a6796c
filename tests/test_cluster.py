"""MRQ on a real 3-node Redis Cluster (``--redis redis+cluster://...``): the kernel's Redis operations
(mrq/broker.py: Lua scripts, MULTIs, BLPOP), the client's round-trip counting and its retries through
outages, and a real worker with the cleaning plugin.

Every key is ``{prefix}:...``, so all of MRQ's keys hash to one slot: the scripts and transactions touch
one node. The clusters run on loopback ports of their own (never 6379) and are torn down afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mrq.broker import AckBatch, Broker
from mrq.connections import ROUNDTRIPS, make_redis
from mrq.servers import RedisClusterServers
from mrq.testing import ServerURLs, WorkerProcess, wait_until

T = "tests.tasks.general."


@pytest.fixture
def cluster(mrq_cluster_urls: ServerURLs) -> Iterator[Any]:
    """MRQ's client of the session's cluster (emptied)."""
    client = make_redis(mrq_cluster_urls.redis)
    yield client
    client.close()


@pytest.fixture
def broker(cluster: Any) -> Broker:
    return Broker(cluster, "mrqcluster")


def test_the_client_is_a_cluster_client(cluster: Any) -> None:
    from redis.cluster import RedisCluster

    assert isinstance(cluster, RedisCluster)
    assert len(cluster.get_primaries()) == 3


def test_every_key_is_in_one_slot(broker: Broker, cluster: Any) -> None:
    keys = [broker.queue_key("a"), broker.delayed_key("b/c"), *broker.notify_keys("b/c"), broker.inflight_key,
            broker.key("paused"), broker.key("queues"), broker.key("hb", "w"), broker.key("sem", "tasks.X")]
    assert len({cluster.keyslot(k) for k in keys}) == 1


def test_push_dequeue_ack_on_a_cluster(broker: Broker) -> None:
    broker.push("default", ["1", "2", "3"])
    broker.push("high", ["h"])
    broker.push("default", ["late"], delay=0.05)
    assert broker.wait(["default"], 0.1)  # BLPOP on the wake-up list
    assert broker.dequeue("w1", ["high", "default"], 2) == [("high", "h"), ("default", "1")]
    time.sleep(0.1)
    assert broker.dequeue("w1", ["default"], 10) == [("default", "2"), ("default", "3"), ("default", "late")]
    assert sorted(r.job_id for r in broker.inflight("w1")) == ["1", "2", "3", "h", "late"]
    broker.ack(AckBatch(done=["h", "1", "2", "3", "late"], delayed=[("default", "3", time.time() + 60)],
                        requeue=[("default", "late")]))
    assert broker.list_ids("default") == ["late"]
    assert broker.sizes(["default"]) == {"default": (1, 1)}
    assert [r.job_id for r in broker.inflight()] == []
    assert broker.known_queues() == ["default"]  # "high" was emptied by the dequeue: forgotten


def test_requeue_inflight_and_push_unique_on_a_cluster(broker: Broker) -> None:
    broker.push("default", ["a", "b"])
    broker.dequeue("dead", ["default"], 1)
    assert broker.requeue_inflight(broker.inflight("dead"), "dead") == ["a"]
    assert broker.list_ids("default") == ["a", "b"]
    broker.dequeue("w", ["default"], 1)  # a in flight again
    assert broker.push_unique("default", [("a", 0, True), ("b", 0, True), ("c", 0, True)]) == ["c"]
    assert broker.push_unique("default", [("d", time.time() + 60, False)], where="delayed") == ["d"]
    assert broker.list_ids("default") == ["b", "c"]


def test_semaphore_heartbeat_kill_pause_on_a_cluster(broker: Broker) -> None:
    assert broker.acquire("tasks.X", "j1", 1, 30)
    assert not broker.acquire("tasks.X", "j2", 1, 30)
    broker.ack(AckBatch(release=[("tasks.X", "j1")]))
    assert broker.acquire("tasks.X", "j2", 1, 30)
    broker.push("default", ["k"])
    broker.dequeue("w", ["default"], 1)
    assert broker.heartbeat("w", 5) == []
    assert broker.alive(["w", "other"]) == {"w": True, "other": False}
    assert broker.request_kill(["k", "unknown"]) == ["k"]
    assert broker.heartbeat("w", 5) == ["k"]
    broker.pause("default")
    broker.push("default", ["p"])
    assert broker.dequeue("w", ["default"], 1) == []
    broker.resume("default")
    assert broker.dequeue("w", ["default"], 1) == [("default", "p")]
    broker.forget_worker("w")
    assert broker.alive(["w"]) == {"w": False}


def test_round_trips_are_counted_on_a_cluster(broker: Broker, cluster: Any) -> None:
    """One per command, per pipeline (transaction or not: every key is on one node) and per script call."""
    broker.push("q", ["warm-up"])  # connections made, scripts loaded
    broker.dequeue("w", ["q"], 1)
    broker.sizes(["q"])
    before = ROUNDTRIPS["redis"]
    broker.push("q", ["1", "2"])                      # MULTI
    assert broker.dequeue("w", ["q"], 1) == [("q", "1")]  # EVALSHA
    assert broker.sizes(["q", "other"]) == {"q": (1, 0), "other": (0, 0)}  # non-transactional pipeline
    assert broker.known_queues() == ["q"]              # SMEMBERS
    assert ROUNDTRIPS["redis"] - before == 4


def test_commands_wait_through_an_outage_of_the_cluster() -> None:
    """A command, a script, a transaction and a pipeline started while the node of MRQ's slot is down (then
    while every node is) wait for it like the other clients and succeed when it is back (redis-py alone gives
    up within 0.1 s). Persistent nodes: the data survives the restarts."""
    servers = RedisClusterServers(persistent=True)
    try:
        servers.start()
        client = make_redis(servers.uri)
        broker = Broker(client, "mrq")
        broker.push("q", ["a", "b"])
        slot_port = client.get_node_from_key(broker.key("q")).port
        results: dict[str, Any] = {}

        def run(name: str, func: Any) -> None:
            try:
                results[name] = func()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results[name] = exc

        for down in ([servers.node(slot_port)], servers.nodes):
            results.clear()
            for node in down:
                node.stop()
            threads = [threading.Thread(target=run, args=item) for item in [
                ("command", lambda: client.llen(broker.queue_key("q"))),
                ("script", lambda: broker.dequeue("w", ["q"], 1)),
                ("transaction", lambda: broker.heartbeat("w", 30)),
                ("pipeline", lambda: broker.sizes(["q"])),
            ]]
            for thread in threads:
                thread.start()
            time.sleep(2)  # every call is failing and retrying meanwhile
            for node in down:
                node.start()
            for thread in threads:
                thread.join(60)
            assert not any(isinstance(r, Exception) for r in results.values()), results
            assert results["transaction"] == []
        assert sorted(r.job_id for r in broker.inflight("w")) == ["a", "b"]
        client.close()

        for node in servers.nodes:  # a client made while no node answers waits for the cluster's layout
            node.stop()
        made: list[Any] = []
        thread = threading.Thread(target=lambda: made.append(make_redis(servers.uri)))
        thread.start()
        time.sleep(2)
        for node in servers.nodes:
            node.start()
        thread.join(60)
        assert Broker(made[0], "mrq").known_queues() == []  # "q" was emptied by the dequeue: forgotten
        made[0].close()
    finally:
        servers.cleanup()


def test_a_replica_takes_over_when_the_primary_of_mrqs_slot_dies() -> None:
    """SIGKILL of the primary that holds MRQ's slot: the next dequeue waits until the cluster promotes its
    replica (2 s node timeout, then an election), finds it, and gets the ids the replica had."""
    servers = RedisClusterServers(replicas=1, node_timeout=2)
    try:
        servers.start()
        client = make_redis(servers.uri)
        broker = Broker(client, "mrq")
        broker.push("q", ["a", "b"])
        primary = client.get_node_from_key(broker.key("q"))
        assert client.execute_command("WAIT", 1, 5000, target_nodes=primary) == 1  # the replica has them
        servers.node(primary.port).kill()
        assert broker.dequeue("w", ["q"], 5) == [("q", "a"), ("q", "b")]
        assert client.get_node_from_key(broker.key("q")).port != primary.port
        client.close()
    finally:
        servers.cleanup()


# ------------------------------------------------------------------------------------------ a real worker


@pytest.fixture
def cluster_worker(mrq_cluster_urls: ServerURLs, request: Any) -> Iterator[WorkerProcess]:
    """MRQ of this process and a worker (not started) on the session's cluster and a fresh MongoDB database."""
    from mrq.context import connections, setup_context

    setup_context(redis=mrq_cluster_urls.redis, mongodb_jobs=mrq_cluster_urls.mongodb)
    worker = WorkerProcess(mrq_cluster_urls, str(request.config.rootpath),
                           {"MRQ_CLEANING_DEAD_INTERVAL": "0.3", "MRQ_CLEANING_LOST_INTERVAL": "0.5"})
    try:
        yield worker
    finally:
        worker.kill()
        connections.reset()


def test_a_worker_runs_jobs_on_a_cluster(cluster_worker: WorkerProcess) -> None:
    from mrq.context import connections
    from mrq.job import Job, queue_job

    assert connections.redis.get_primaries()  # this process talks to the cluster too
    cluster_worker.start("--plugins", "cleaning", "--greenlets", "4")
    # The first start's rebuild takes every job queued before it: let it pass before queueing, so that no job
    # of this test is in its sight (the regular passes leave alone jobs younger than the grace period).
    wait_until(lambda: cluster_worker.report()["cleaning"].get("pass_rebuild"), what="the first start's rebuild")
    ok = queue_job(T + "Add", {"a": 40, "b": 2})
    failing = queue_job(T + "Fail", {})
    retried = queue_job(T + "Retry", {"succeed_after": 2, "delay": 0.3})
    running = queue_job(T + "Sleep", {"t": 30})
    wait_until(lambda: Job(running).fetch().data["status"] == "started", what="the 30 s job started")
    assert Job(running).cancel() is True  # the kill request goes through the heartbeat
    assert Job(ok).wait(timeout=30) == 42
    cluster_worker.wait_for_idle(timeout=30)  # the retries are delayed ids: due within 30 s counts as waiting
    assert Job(failing).fetch().data["status"] == "failed"
    assert {k: Job(retried).fetch().data[k] for k in ("status", "result", "retry_count")} == {
        "status": "success", "result": 2, "retry_count": 2}
    assert Job(running).fetch().data["status"] == "cancel"
    wait_until(lambda: cluster_worker.report()["cleaning"].get("pass_lost"), timeout=10, what="a lost-jobs pass")
    assert cluster_worker.stop() == 0
    report = cluster_worker.report()
    assert report["counters"]["redis_roundtrips"] > 0
    assert report["counters"]["success"] == 2
    assert report["cleaning"]["pass_dead"] >= 1
    assert (report["cleaning"]["requeued"], report["cleaning"]["errors"]) == (0, 0), report["cleaning"]


def test_a_worker_runs_raw_jobs_on_a_cluster(mrq_cluster_urls: ServerURLs, request: Any, tmp_path: Any) -> None:
    """The raw queues of tests/configs/raw.py on a cluster: a list (the fast path that stores nothing, a failure
    stored, a retry that becomes a regular job), a set, a sorted set, a timed set; and a raw job in flight on a
    SIGKILLed worker, put back into its raw queue by the cleaning plugin of another worker and run again."""
    import json
    from pathlib import Path

    from mrq.context import connections, setup_context
    from mrq.raw import queue_raw_jobs

    config = str(Path(__file__).parent / "configs" / "raw.py")
    setup_context(redis=mrq_cluster_urls.redis, mongodb_jobs=mrq_cluster_urls.mongodb, config=config)
    env = {"MRQ_CLEANING_DEAD_INTERVAL": "0.3", "MRQ_CLEANING_LOST_INTERVAL": "0.5"}
    first = WorkerProcess(mrq_cluster_urls, str(request.config.rootpath), env)
    second = WorkerProcess(mrq_cluster_urls, str(request.config.rootpath), env)
    jobs = connections.mongodb_jobs["mrq_jobs"]
    runs = tmp_path / "runs"

    def payload(**params: Any) -> str:
        return json.dumps(params, sort_keys=True)

    def lines() -> list[str]:
        return runs.read_text().splitlines() if runs.exists() else []

    try:
        first.start("--config", config, "--plugins", "cleaning", queues=["fast_raw"])
        queue_raw_jobs("fast_raw", [payload(task="Record", file=str(runs), t=1, result="killed")])
        wait_until(lambda: lines(), what="the raw job started")
        first.kill()
        second.start("--config", config, "--plugins", "cleaning", "--greenlets", "1",
                     queues=["fast_raw", "retries", "uniq_set", "prio_sorted_set", "later_timed_set"])
        queue_raw_jobs("fast_raw", [payload(task="noop", i=i) for i in range(20)]
                       + [payload(task="Fail", message="kaput"), payload(task="Retry", succeed_after=1, delay=0)])
        queue_raw_jobs("uniq_set", [payload(task="Record", file=str(runs), result="set")] * 2)
        queue_raw_jobs("prio_sorted_set", {payload(task="Record", file=str(runs), result=r): s
                                           for r, s in (("second", 2), ("first", 1))})
        queue_raw_jobs("later_timed_set", {payload(task="Record", file=str(runs), result="due"): time.time() + 1})
        wait_until(lambda: len(lines()) == 6, timeout=30, what="the killed job run again, and 4 more records")
        second.wait_for_idle(timeout=30)
        assert second.stop() == 0
        report = second.report()
        assert report["cleaning"]["dead_worker"] == 1  # the killed worker's raw job, back in its raw queue
        assert report["counters"]["success"] == 20 + 1 + 1 + 2 + 1 + 1  # noops, retry, set, sorted, timed, killed
        assert report["counters"]["redis_roundtrips"] > 0
        failed = jobs.find_one({"status": "failed"})
        assert (failed["raw_queue"], failed["params"]) == ("fast_raw", {"message": "kaput"})
        retried = jobs.find_one({"path": T + "Retry"})
        assert (retried["status"], retried["queue"], retried["result"]) == ("success", "retries", 1)
        assert jobs.count_documents({}) == 2  # the raw successes stored nothing
    finally:
        first.kill()
        second.kill()
        connections.reset()
