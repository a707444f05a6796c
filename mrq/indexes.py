"""The MongoDB indexes MRQ's queries need, created idempotently when a worker starts."""

from __future__ import annotations

from typing import Any

from mrq.logger import ensure_logs_collection

__all__ = ["ensure_indexes"]


def ensure_indexes(jobs_db: Any, logs_db: Any = None, logs_size: int = 0) -> None:
    """Create every index of ``mrq_jobs``, ``mrq_workers`` and ``mrq_logs`` (no-op if they exist).

    * ``mrq_jobs``: ``(status, queue)`` (filters by status, by status and queue: dequeue checks,
      requeuers, the dashboard), ``(path, status)``, ``worker`` (sparse) and ``dateexpires`` (TTL: a job
      document disappears at its ``dateexpires``). Each index costs every status write (about 0.2 ms per
      update and index on SecantusDB), so there are no others.
    * ``mrq_workers``: ``dateexpires`` (TTL: a worker that stopped reporting disappears).
    * ``mrq_logs``: ``job`` (capped collection by default).
    """
    jobs = jobs_db["mrq_jobs"]
    jobs.create_index([("status", 1), ("queue", 1)])
    jobs.create_index([("path", 1), ("status", 1)])
    jobs.create_index([("worker", 1)], sparse=True)
    jobs.create_index([("dateexpires", 1)], expireAfterSeconds=0)
    jobs_db["mrq_workers"].create_index([("dateexpires", 1)], expireAfterSeconds=0)
    ensure_logs_collection(logs_db, logs_size)
