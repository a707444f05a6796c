"""Test plugin: ``mrq_jobs_dequeued`` appends the dequeued ids to the file ``MRQ_SLOW_DEQUEUED_FILE``, then takes
1.5 s (a plugin doing slow I/O there), so that a test can act between a job's fetch and its start."""

from __future__ import annotations

import os
from typing import Any

import gevent

from mrq.hookspecs import hookimpl


@hookimpl
def mrq_jobs_dequeued(worker: Any, jobs: list[Any]) -> None:
    with open(os.environ["MRQ_SLOW_DEQUEUED_FILE"], "a") as f:
        f.write("".join(f"{job.id}\n" for job in jobs))
    gevent.sleep(1.5)
