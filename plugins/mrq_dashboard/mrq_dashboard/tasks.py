"""The task that runs a bulk action when ``--dashboard_queue`` asks for it to run on a worker."""

from __future__ import annotations

from typing import Any

from mrq.actions import cancel_jobs, requeue_jobs
from mrq.task import Task

__all__ = ["BulkAction"]


class BulkAction(Task):
    """``{"action": "cancel"|"requeue", "filters": {...}, "to_queue": "", "reset_retries": true}``."""

    def run(self, params: dict[str, Any]) -> Any:
        filters = params.get("filters") or {}
        if params.get("action") == "cancel":
            return cancel_jobs(filters)
        if params.get("action") == "requeue":
            return requeue_jobs(filters, queue=params.get("to_queue") or None,
                                reset_retries=bool(params.get("reset_retries", True)))
        raise ValueError(f"Unknown bulk action {params.get('action')!r}; use 'cancel' or 'requeue'.")
