"""A plugin whose hooks raise, for the hooks named in ``MRQ_RAISING_HOOKS`` (comma separated).

With ``MRQ_RAISING_FILE``, each call of a job hook first appends "<hook> <job id>..." to that file.

Used to check that a broken plugin cannot lose jobs or stop a worker through a hook whose errors are
documented as logged.
"""

from __future__ import annotations

import os
from typing import Any

from mrq.hookspecs import hookimpl


def _record(hook: str, *job_ids: Any) -> None:
    path = os.environ.get("MRQ_RAISING_FILE")
    if path:
        with open(path, "a") as f:
            f.write(" ".join([hook, *map(str, job_ids)]) + "\n")


def _maybe_raise(hook: str) -> None:
    if hook in os.environ.get("MRQ_RAISING_HOOKS", "").split(","):
        raise RuntimeError(f"raising plugin: {hook} failed on purpose")


@hookimpl
def mrq_worker_report(worker: Any, report: dict[str, Any]) -> None:
    _maybe_raise("mrq_worker_report")


@hookimpl
def mrq_worker_stop(worker: Any) -> None:
    _maybe_raise("mrq_worker_stop")


@hookimpl
def mrq_jobs_dequeued(worker: Any, jobs: list[Any]) -> None:
    _record("mrq_jobs_dequeued", *(j.id for j in jobs))
    _maybe_raise("mrq_jobs_dequeued")


@hookimpl
def mrq_job_finished(worker: Any, job: Any, status: str) -> None:
    _record("mrq_job_finished", job.id)
    _maybe_raise("mrq_job_finished")


@hookimpl
def mrq_job_status_changed(job_id: Any, status: str, fields: dict[str, Any]) -> None:
    _record("mrq_job_status_changed", job_id)
    _maybe_raise("mrq_job_status_changed")
