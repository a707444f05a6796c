"""The kernel's Redis operations (mrq/broker.py: three Lua scripts, MULTIs, BLPOP) on a real 3-node Redis Cluster.

Every key is ``{prefix}:...``, so all of MRQ's keys hash to one slot: the scripts and transactions touch
one node. The cluster is started on loopback ports of its own (never 6379) and torn down afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mrq.broker import AckBatch, Broker
from mrq.servers import RedisServer, ServerError, ServerNotAvailable, free_port


class ClusterNode(RedisServer):
    """A ``redis-server --cluster-enabled yes`` node."""

    def command(self) -> list[str]:
        return [*super().command(), "--cluster-enabled", "yes",
                "--cluster-config-file", str(Path(self.data_dir) / "nodes.conf"), "--cluster-node-timeout", "5000"]


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    import socket

    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port + 10000)) != 0:
                return port


def _create_cluster(nodes: list[ClusterNode]) -> None:
    import redis

    cli = shutil.which("redis-cli")
    if cli:
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
    else:  # assign the slots and introduce the nodes ourselves
        per = 16384 // len(nodes)
        for i, node in enumerate(nodes):
            client = redis.Redis(port=node.port)
            end = 16384 if i == len(nodes) - 1 else (i + 1) * per
            client.execute_command("CLUSTER ADDSLOTSRANGE", i * per, end - 1)
            if i:
                client.execute_command("CLUSTER MEET", "127.0.0.1", nodes[0].port)
            client.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [redis.Redis(port=n.port).cluster("info")["cluster_state"] for n in nodes]
        if all(s == "ok" for s in states):
            return
        time.sleep(0.1)
    raise AssertionError(f"cluster not ok after 30 s: {states}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from redis.cluster import RedisCluster

    nodes = [ClusterNode(port=_cluster_port()) for _ in range(3)]
    try:
        for node in nodes:
            node.start()
    except ServerNotAvailable as exc:
        pytest.skip(f"no redis-server: {exc}")
    except ServerError as exc:
        for node in nodes:
            node.cleanup()
        if "cluster" in str(exc).lower() and ("unrecognized" in str(exc).lower() or "support" in str(exc).lower()):
            pytest.skip(f"this redis-server cannot run in cluster mode (--cluster-enabled yes): {exc}")
        raise
    try:
        _create_cluster(nodes)
        client = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        yield client
        client.close()
    finally:
        for node in nodes:
            node.cleanup()


@pytest.fixture
def broker(cluster: Any) -> Broker:
    cluster.flushall()
    return Broker(cluster, "mrqcluster")


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
