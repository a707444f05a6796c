"""The indexes the dashboard's job lists need, created by the dashboard at start (idempotent).

The kernel's indexes serve the workers; the dashboard reads jobs newest first by id windows
(:mod:`mrq_dashboard.jobquery`), through one ``(<field>, _id)`` index per field it can filter on. Each index
is updated by every write that changes its field: the status writes of the workers change ``status`` (and
``worker`` when a job starts, ``exceptiontype`` when it fails), the others only change on enqueue or on a
requeue to another queue. Their measured cost is in the plugin's README and docs/performance.md
(``bench/bench_dashboard.py --index-cost``). ``--no-dashboard_indexes`` skips them.
"""

from __future__ import annotations

from typing import Any

from mrq.job import JOBS

__all__ = ["DASHBOARD_INDEXES", "ensure_dashboard_indexes"]

#: (key, options) of each index on ``mrq_jobs``.
DASHBOARD_INDEXES: tuple[tuple[list[tuple[str, int]], dict[str, Any]], ...] = (
    ([("status", 1), ("_id", 1)], {}),
    ([("queue", 1), ("_id", 1)], {}),
    ([("path", 1), ("_id", 1)], {}),
    ([("exceptiontype", 1), ("_id", 1)], {"sparse": True}),
    ([("worker", 1), ("_id", 1)], {"sparse": True}),
)


def ensure_dashboard_indexes(database: Any) -> list[str]:
    """Create the indexes of :data:`DASHBOARD_INDEXES` on ``database.mrq_jobs``; returns their names."""
    jobs = database[JOBS]
    return [jobs.create_index(keys, **options) for keys, options in DASHBOARD_INDEXES]
