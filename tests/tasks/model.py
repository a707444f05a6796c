"""Tasks of the broker model (tests/test_model.py): each run ends as the model decided, with no side effect.

The model puts the exception a job's next run raises in :data:`ENDS` (by job id) before it lets the worker run
it; no entry means success.
"""

from __future__ import annotations

import json
from typing import Any

from mrq.context import get_current_job
from mrq.task import Task

#: job id -> the exception its next run raises (popped by the run).
ENDS: dict[str, BaseException] = {}


class Step(Task):
    """No limit; at most 2 retries."""

    max_retries = 2

    def run(self, params: dict[str, Any]) -> Any:
        job = get_current_job()
        exc = ENDS.pop(str(job.id), None) if job is not None else None
        if exc is not None:
            raise exc
        return "ok"


class Solo(Step):
    """One at a time across all workers."""

    max_concurrency = 1


class Pair(Step):
    """Two at a time across all workers."""

    max_concurrency = 2


def factory(payload: str) -> dict[str, Any]:
    """The job factory of the model's raw queues: ``{"task": "Solo", "n": 3}`` runs ``Solo``."""
    spec = json.loads(payload)
    return {"path": f"tests.tasks.model.{spec['task']}", "params": {"n": spec["n"]}}
