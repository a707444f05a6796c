"""Queues: sizes, pause/resume, listing, and job counts by queue and status.

``Queue("default").size()`` reads Redis (ids waiting); :func:`count_jobs` reads
MongoDB (documents by queue and status, index-backed).
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from typing import Any

from mrq.context import connections, get_broker
from mrq.exceptions import InvalidParams

__all__ = ["Queue", "count_jobs", "all_known_queues", "check_queue_name", "check_job_queue"]


def check_queue_name(name: Any) -> str:
    """Return ``name`` if it can name a queue, else raise :class:`InvalidParams` saying why.

    A queue name is non-empty UTF-8 text without whitespace, control characters or commas: in-flight records are
    space-separated, and ``MRQ_QUEUES``/``--queues`` lists split on spaces and commas. Any other character is
    fine (``/`` makes a subqueue; braces leave every key in the ``{prefix}`` hash slot).
    """
    if not isinstance(name, str) or not name:
        raise InvalidParams(f"Queue name {name!r:.200} is invalid: use a non-empty string.")
    bad = next((c for c in name if c.isspace() or c == "," or unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InvalidParams(f"Queue name {name!r:.200} is invalid: it contains {bad!r}; use a name without "
                            "whitespace, control characters or commas (and valid UTF-8).")
    return name


def check_job_queue(name: Any) -> str:
    """:func:`check_queue_name`, and a regular queue: where a job's id may go (a requeue, a retry, a scheduled or
    enqueued job), not a raw queue (its members are payloads, see :mod:`mrq.raw`)."""
    from mrq.broker import queue_kind

    if queue_kind(check_queue_name(name)) != "r":
        raise InvalidParams(f"Queue {name!r:.200} is a raw queue (by its name: it ends in _raw, _set, _sorted_set or "
                            "_timed_set), which holds payloads, not jobs: use a regular queue's name.")
    return name


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
