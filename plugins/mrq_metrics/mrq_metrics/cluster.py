"""Cluster-wide gauges, computed at scrape time: queue depths, oldest job age per queue, live workers, slots in use.

A scrape costs a fixed number of round trips whatever the number of jobs: one MongoDB query for the worker
documents, one Redis MGET of their heartbeats (:meth:`Broker.alive`), one Redis pipeline for the known queues
and the ``max_concurrency`` slots, one Redis pipeline for every queue's counts and heads, and one MongoDB query
for the documents of the jobs at the heads of the regular queues (their ``_id``, by index).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from mrq.broker import queue_kind
from mrq.context import connections, get_broker
from mrq.job import JOBS
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mrq_metrics.figures import runnable_since

__all__ = ["QueueStats", "ClusterCollector", "queue_stats", "WORKERS", "CLUSTER_METRICS"]

log = logging.getLogger("mrq.metrics")

#: The gauges computed at scrape time.
CLUSTER_METRICS = ("mrq_queue_jobs", "mrq_queue_oldest_job_age_seconds", "mrq_workers", "mrq_concurrency_slots_in_use")

#: MongoDB collection of the worker reports (the kernel's ``mrq.worker.WORKERS``).
WORKERS = "mrq_workers"


@dataclass
class QueueStats:
    """What a scrape knows of a queue: the counts of :meth:`mrq.broker.Broker.sizes` and since when its oldest
    job waits (unix time; ``None`` if empty, or a raw list, set or sorted set: their payloads carry no time)."""

    waiting: int
    delayed: int
    oldest: float | None = None


def queue_stats(queues: Sequence[str], now: float | None = None) -> tuple[dict[str, QueueStats], dict[str, int]]:
    """Counts and oldest job of each queue, and the ``max_concurrency`` slots in use by task path, in one Redis
    pipeline plus one MongoDB query (the documents of the regular queues' head jobs)."""
    broker = get_broker()
    now = time.time() if now is None else now
    at = repr(now)
    pipe = broker.redis.pipeline(transaction=False)
    pipe.hvals(broker.key("semheld"))
    for q in queues:
        kind, key, delayed = queue_kind(q), broker.queue_key(q), broker.delayed_key(q)
        if kind in ("r", "l"):
            pipe.llen(key)
        elif kind == "s":
            pipe.scard(key)
        elif kind == "z":
            pipe.zcard(key)
        else:
            pipe.zcount(key, "-inf", at)
            pipe.zcount(key, "(" + at, "+inf")
            pipe.zrangebyscore(key, "-inf", at, start=0, num=1, withscores=True)  # the member due first
        pipe.zcard(delayed)
        if kind == "r":
            pipe.lindex(key, 0)  # the next job to run: the one waiting longest (or an interrupted one)
            pipe.zrangebyscore(delayed, "-inf", at, start=0, num=1, withscores=True)  # due, not yet moved
    values = iter(pipe.execute())
    slots = Counter(_s(p) for p in next(values) or [])
    stats: dict[str, QueueStats] = {}
    heads: dict[ObjectId, str] = {}
    for q in queues:
        kind = queue_kind(q)
        if kind == "t":
            waiting, later, first, parked = next(values), next(values), next(values), next(values)
            stats[q] = QueueStats(waiting, later + parked, first[0][1] if first else None)
            continue
        stats[q] = QueueStats(next(values), next(values))
        if kind == "r":
            head, due = next(values), next(values)
            if due:
                stats[q].oldest = float(due[0][1])
            if head is not None:
                try:
                    heads[ObjectId(_s(head))] = q
                except InvalidId:
                    pass
    if heads:
        for doc in connections.mongodb_jobs[JOBS].find(
                {"_id": {"$in": list(heads)}}, ["datequeued", "dateupdated", "datedue", "dateretry"]):
            since = runnable_since(doc)
            q = heads[doc["_id"]]
            if since is not None and (stats[q].oldest is None or since < stats[q].oldest):
                stats[q].oldest = since
    return stats, dict(slots)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterCollector(Collector):
    """``mrq_queue_jobs``, ``mrq_queue_oldest_job_age_seconds``, ``mrq_workers`` and
    ``mrq_concurrency_slots_in_use``, read from Redis and MongoDB at each scrape.

    :param pick_queues: given the known queues (ids waiting or delayed) and the queues of the live workers, the
        queues to report. A worker reports its own queues; the dashboard every queue.
    """

    def __init__(self, pick_queues: Callable[[list[str], list[str]], list[str]]) -> None:
        self.pick_queues = pick_queues

    def describe(self) -> list[Any]:
        return []  # computed at scrape time only (registering must not query the servers)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            now = time.time()
            workers = list(connections.mongodb_jobs[WORKERS].find({"status": {"$ne": "stop"}}, {"queues": 1}))
            broker = get_broker()
            alive = broker.alive([str(w["_id"]) for w in workers])
            live = [w for w in workers if alive.get(str(w["_id"]))]
            worker_queues = sorted({q for w in live for q in w.get("queues") or []})
            queues = self.pick_queues(broker.known_queues(), worker_queues)
            stats, slots = queue_stats(queues, now)
        except Exception as exc:  # noqa: BLE001 - a scrape must still answer with the process metrics
            log.warning("metrics: cluster gauges not computed: %s: %s", type(exc).__name__, exc)
            return
        jobs = GaugeMetricFamily("mrq_queue_jobs", "Jobs in each queue: waiting (may run now) or delayed (due "
                                 "later, retries, waiting for a max_concurrency slot).", labels=["queue", "state"])
        age = GaugeMetricFamily("mrq_queue_oldest_job_age_seconds", "Seconds the oldest runnable job of each queue "
                                "has waited (0 when none waits; absent for raw lists, sets and sorted sets).",
                                labels=["queue"])
        for q in queues:
            s = stats[q]
            jobs.add_metric([q, "waiting"], s.waiting)
            jobs.add_metric([q, "delayed"], s.delayed)
            if s.oldest is not None:
                age.add_metric([q], max(0.0, now - s.oldest))
            elif queue_kind(q) in ("r", "t"):
                age.add_metric([q], 0.0)
        yield jobs
        yield age
        yield GaugeMetricFamily("mrq_workers", "Live MRQ workers (reporting, with a current heartbeat).",
                                value=len(live))
        used = GaugeMetricFamily("mrq_concurrency_slots_in_use", "max_concurrency slots taken, by task path.",
                                 labels=["path"])
        for path, count in sorted(slots.items()):
            used.add_metric([path], count)
        yield used


def worker_queues_picker(own: Sequence[str]) -> Callable[[list[str], list[str]], list[str]]:
    """A worker reports its own queues, and the known subqueues of its ``root/`` queues."""
    def pick(known: list[str], _workers: list[str]) -> list[str]:
        out = [q for q in own if not q.endswith("/")]
        roots = tuple(q for q in own if q.endswith("/"))
        out += [q for q in known if roots and q.startswith(roots) and q not in out]
        return sorted(set(out))
    return pick


def all_queues(known: list[str], workers: list[str]) -> list[str]:
    """Every known queue, and those workers listen to (so that an empty one shows 0, not nothing)."""
    return sorted(set(known) | {q for q in workers if not q.endswith("/")})
