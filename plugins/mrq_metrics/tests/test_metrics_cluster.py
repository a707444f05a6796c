"""The cluster gauges, computed at scrape time: counts equal the kernel's ``Broker.sizes`` for every queue kind,
the oldest job's age comes from its document (a retried or requeued job waits since then, not since its id was
made), due delayed ids count, and a scrape costs a fixed number of round trips whatever the number of jobs."""

from __future__ import annotations

import datetime
import time

from metrics_helpers import T, parse
from mrq.connections import ROUNDTRIPS
from mrq.context import connections, get_broker
from mrq.job import queue_job, queue_jobs
from prometheus_client import CollectorRegistry, generate_latest

from mrq_metrics.cluster import ClusterCollector, all_queues, queue_stats, worker_queues_picker


def gauges() -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(all_queues))
    return parse(generate_latest(registry).decode())


def age(samples: dict, queue: str) -> float | None:
    return samples.get(("mrq_queue_oldest_job_age_seconds", (("queue", queue),)))


def test_counts_equal_broker_sizes_for_every_queue_kind(mrq_config):
    broker = get_broker()
    queue_jobs(T + "Add", [{"a": i} for i in range(3)], queue="regular")
    queue_jobs(T + "Add", [{"a": i} for i in range(2)], queue="regular", delay=60)
    broker.push_raw("crawl_raw", ["a", "b"])
    broker.push_raw("crawl_set", ["a", "b", "c"])
    broker.push_raw("crawl_sorted_set", ["a"], {"a": 5})
    now = time.time()
    broker.push_raw("crawl_timed_set", ["due", "later"], {"due": now - 100, "later": now + 100})
    queues = broker.known_queues()
    assert set(queues) == {"regular", "crawl_raw", "crawl_set", "crawl_sorted_set", "crawl_timed_set"}
    stats, slots = queue_stats(queues)
    assert {q: (s.waiting, s.delayed) for q, s in stats.items()} == broker.sizes(queues)
    assert slots == {}
    samples = gauges()
    assert samples[("mrq_queue_jobs", (("queue", "regular"), ("state", "waiting")))] == 3
    assert samples[("mrq_queue_jobs", (("queue", "regular"), ("state", "delayed")))] == 2
    assert 99 <= age(samples, "crawl_timed_set") < 110       # due 100 s ago
    assert age(samples, "crawl_raw") is None and age(samples, "crawl_set") is None  # no time in their payloads
    assert 0 <= age(samples, "regular") < 5
    assert samples[("mrq_workers", ())] == 0


def test_oldest_age_comes_from_the_document_and_due_delayed_ids(mrq_config):
    broker, jobs = get_broker(), connections.mongodb_jobs["mrq_jobs"]
    head, _ = queue_jobs(T + "Add", [{"a": 1}, {"a": 2}], queue="q1")
    # Requeued or retried ten minutes ago: it waits since then (its id was made now).
    ten_minutes_ago = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=10)
    jobs.update_one({"_id": head}, {"$set": {"dateupdated": ten_minutes_ago, "datequeued": ten_minutes_ago}})
    assert 595 < age(gauges(), "q1") < 610
    # A retry due 30 s ago, not yet moved to the list by a dequeue (no worker listens): it counts.
    queue_job(T + "Add", {"a": 3}, queue="q2")
    retried = queue_job(T + "Add", {"a": 4}, queue="q2", delay=60)
    broker.redis.zadd(broker.delayed_key("q2"), {str(retried): time.time() - 30})
    assert 29 < age(gauges(), "q2") < 40
    # A worker's endpoint reports its own queues (and the known subqueues of its root/ queues), empty ones at 0.
    pick = worker_queues_picker(["q1", "crawl/", "empty"])
    assert pick(["q1", "q2", "crawl/a", "crawl/b"], []) == ["crawl/a", "crawl/b", "empty", "q1"]


def test_a_scrape_costs_the_same_round_trips_for_10_or_2000_jobs(mrq_config):
    def cost() -> tuple[int, int]:
        before = dict(ROUNDTRIPS)
        gauges()
        return ROUNDTRIPS["redis"] - before.get("redis", 0), ROUNDTRIPS["mongodb"] - before.get("mongodb", 0)

    for q in ("a", "b", "c"):
        queue_jobs(T + "Add", [{"a": i} for i in range(3)], queue=q)
    small = cost()
    for q in ("a", "b", "c"):
        queue_jobs(T + "Add", [{"a": i} for i in range(700)], queue=q)
        queue_jobs(T + "Add", [{"a": i} for i in range(10)], queue=q, delay=60)
    assert cost() == small
    assert small[0] <= 4 and small[1] <= 2
