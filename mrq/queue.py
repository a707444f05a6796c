"""Queues: sizes, pause/resume, listing, and job counts by queue and status.

``Queue("default").size()`` reads Redis (ids waiting); :func:`count_jobs` reads
MongoDB (documents by queue and status, index-backed).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mrq.broker import check_job_queue, check_queue_name  # their home is the broker (queue naming); kept here
from mrq.runtime import connections, get_broker

__all__ = ["Queue", "count_jobs", "all_known_queues", "check_queue_name", "check_job_queue"]


class Queue:
    """A named queue. ``q/`` names every subqueue ``q/...`` (for ``pause``)."""

    def __init__(self, name: str) -> None:
        self.name = check_queue_name(name)

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    def size(self) -> int:
        """Ids waiting in Redis (not counting delayed ones)."""
        return get_broker().sizes([self.name])[self.name][0]

    def delayed_size(self) -> int:
        """Ids waiting for their delay (delayed jobs and retries)."""
        return get_broker().sizes([self.name])[self.name][1]

    def list_job_ids(self, skip: int = 0, limit: int = 100) -> list[str]:
        """Ids at the head of the queue, next to run first."""
        return get_broker().list_ids(self.name, skip, skip + limit - 1)

    def pause(self) -> None:
        """Workers stop dequeuing from this queue (``q/``: from every subqueue of q) within one dequeue."""
        get_broker().pause(self.name)

    def resume(self) -> None:
        get_broker().resume(self.name)

    def is_paused(self) -> bool:
        paused = get_broker().paused()
        return self.name in paused or ("/" in self.name and self.name.split("/", 1)[0] + "/" in paused)

    def empty(self) -> None:
        """Drop every waiting id of this queue from Redis (documents stay, with their status)."""
        get_broker().empty(self.name)

    def counts(self) -> dict[str, int]:
        """Number of job documents of this queue by status."""
        return count_jobs({"queue": self.name}).get(self.name, {})


def all_known_queues() -> list[str]:
    """Every queue a job was ever pushed to."""
    return get_broker().known_queues()


def count_jobs(query: dict[str, Any] | None = None) -> dict[str, dict[str, int]]:
    """``{queue: {status: count}}`` over ``mrq_jobs`` (one aggregation)."""
    pipeline: list[dict[str, Any]] = [{"$match": query}] if query else []
    pipeline.append({"$group": {"_id": {"queue": "$queue", "status": "$status"}, "n": {"$sum": 1}}})
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for row in connections.mongodb_jobs["mrq_jobs"].aggregate(pipeline):
        out[row["_id"]["queue"]][row["_id"]["status"]] = row["n"]
    return dict(out)
