"""Test plugin: ``mrq_jobs_dequeued`` appends the dequeued ids to the file ``MRQ_SLOW_DEQUEUED_FILE``, then holds
the batch until its jobs are cancelled (at most 10 s) and 1 s more, so that a test can cancel a job between its
fetch and its start, and the worker's heartbeat reads the kill request meanwhile."""

from __future__ import annotations

import os
import time
from typing import Any

import gevent

from mrq.hookspecs import hookimpl
from mrq.job import Job


@hookimpl
def mrq_jobs_dequeued(worker: Any, jobs: list[Any]) -> None:
    with open(os.environ["MRQ_SLOW_DEQUEUED_FILE"], "a") as f:
        f.write("".join(f"{job.id}\n" for job in jobs))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Job(job.id).fetch(["status"]).status != "cancel" for job in jobs):
        gevent.sleep(0.05)
    gevent.sleep(1)
