"""Durable steps: ``with step("charge") as s:`` inside a task; a step that ended is not run again.

A step's result is stored in the job's document (``wf_steps.<name>``: ``result``, ``date``) as soon as the step
ends, in one update: a retry, a requeue, or the run after a worker was killed finds it there and skips it.
Workers read ``wf_steps`` with the batch's documents (``mrq_worker_job_fields``): no extra query per job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mrq.context import get_current_job
from mrq.exceptions import InvalidParams, MRQError
from mrq.job import utcnow

from mrq_workflows.graph import jobs

__all__ = ["Step", "step"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class Step:
    """One durable step of the current job. Use :func:`step`."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidParams(f"Step name {name!r:.60}: use 1-100 characters [A-Za-z0-9_-] (it is a field name "
                                "of the job's document).")
        job = get_current_job()
        if job is None or job.id is None:
            raise MRQError(f"step({name!r}) runs inside a task (a job run by a worker or mrq-run): there is no "
                           "current job here.")
        self.name = name
        self.job = job
        data = job.data if job.data is not None else {}
        if "wf_steps" not in data:  # not read with the job (a worker without the plugin, mrq-run): read it once
            found = jobs().find_one({"_id": job.id}, {"wf_steps": 1}) or {}
            data["wf_steps"] = found.get("wf_steps") or {}
            job.data = data
        done = (data.get("wf_steps") or {}).get(name)
        #: True if this step ended in an earlier run: its body should not run again; :attr:`result` is stored.
        self.done: bool = done is not None
        #: The step's result: set it in the ``with`` block; read back from the document when :attr:`done`.
        self.result: Any = done.get("result") if done is not None else None

    @property
    def todo(self) -> bool:
        """True when the step's body must run (it did not end in an earlier run)."""
        return not self.done

    def __enter__(self) -> Step:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and not self.done:
            self._store()

    def _store(self) -> None:
        entry = {"result": self.result, "date": utcnow()}
        jobs().update_one({"_id": self.job.id}, {"$set": {f"wf_steps.{self.name}": entry}})
        assert self.job.data is not None
        self.job.data.setdefault("wf_steps", {})[self.name] = entry
        self.done = True

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` unless the step ended before; return its (stored) result."""
        if not self.done:
            self.result = func(*args, **kwargs)
            self._store()
        return self.result


def step(name: str) -> Step:
    """A durable step of the current job::

        with step("charge") as s:
            if s.todo:
                s.result = charge(card, amount)
        receipt = s.result

    or ``receipt = step("charge").run(charge, card, amount)``. The body's result is stored when the block ends
    without an exception; a later run of the same job (retry, requeue, the run after its worker was killed)
    finds ``s.done`` true and ``s.result`` stored. Steps are ordered by your code, not by MRQ: name each once.
    """
    return Step(name)
