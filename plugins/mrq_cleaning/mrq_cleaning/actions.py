"""Bulk cancel/requeue by filter: moved to the kernel as :mod:`mrq.actions`; re-exported here so that code
importing ``mrq_cleaning.actions`` keeps working."""

from __future__ import annotations

from mrq.actions import FILTER_KEYS, build_query, cancel_jobs, requeue_jobs

__all__ = ["build_query", "cancel_jobs", "requeue_jobs", "FILTER_KEYS"]
