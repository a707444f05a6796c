"""The MongoDB indexes MRQ's queries need, created idempotently when a worker starts."""

from __future__ import annotations

from typing import Any

from mrq.logger import ensure_logs_collection

__all__ = ["ensure_indexes"]


def ensure_indexes(jobs_db: Any, logs_db: Any = None, logs_size: int = 0) -> None:
    """Create every index of ``mrq_jobs``, ``mrq_workers`` and ``mrq_logs`` (no-op if they exist).

    * ``mrq_jobs``: ``(queue, status)`` and ``(status, queue, path)`` for counts and
      filters, ``path``, ``worker`` (sparse), ``datequeued``, and ``dateexpires``
      (TTL: a job document disappears at its ``dateexpires``).
    * ``mrq_workers``: ``dateexpires`` (TTL: a worker that stopped reporting disappears).
    * ``mrq_logs``: ``job`` (capped collection by default).
    """
    jobs = jobs_db["mrq_jobs"]
    jobs.create_index([("queue", 1), ("status", 1)])
    jobs.create_index([("status", 1), ("queue", 1), ("path", 1)])
    jobs.create_index([("path", 1)])
    jobs.create_index([("worker", 1)], sparse=True)
    jobs.create_index([("datequeued", 1)])
    jobs.create_index([("dateexpires", 1)], expireAfterSeconds=0)
    jobs_db["mrq_workers"].create_index([("dateexpires", 1)], expireAfterSeconds=0)
    ensure_logs_collection(logs_db, logs_size)
