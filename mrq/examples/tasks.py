"""Example tasks: what ``mrq-embedded`` queues to show MRQ at work."""

from __future__ import annotations

import random
from typing import Any

import gevent

from mrq.context import get_current_job, get_current_worker, log, retry_current_job, set_current_job_progress
from mrq.exceptions import JobInterrupt
from mrq.task import Task

__all__ = ["Add", "Crawl", "Flaky", "Fail", "add"]


class Add(Task):
    """Adds ``a`` and ``b``: ``mrq-run mrq.examples.tasks.Add '{"a": 41, "b": 1}'`` prints 42."""

    def run(self, params: dict[str, Any]) -> Any:
        log.info("Adding %s + %s", params["a"], params["b"])
        return params["a"] + params["b"]


def add(a: int, b: int) -> int:
    """The same as a plain function: params become keyword arguments."""
    return a + b


class Crawl(Task):
    """Pretends to fetch ``pages`` pages, reporting progress and logging each one. When its worker stops (a first
    Ctrl-C), it stops at once and is requeued, rather than holding the worker up until its last page."""

    def run(self, params: dict[str, Any]) -> Any:
        pages = int(params.get("pages", 10))
        worker = get_current_worker()
        for i in range(pages):
            if worker is not None and worker.stopping:
                log.info("The worker is stopping: interrupted at page %d/%d, requeued", i, pages)
                raise JobInterrupt("the worker is stopping")
            gevent.sleep(random.uniform(0.05, 0.3))
            log.info("Fetched page %d/%d", i + 1, pages)
            set_current_job_progress((i + 1) / pages)
        return {"pages": pages}


class Flaky(Task):
    """Fails with a retryable error twice, then succeeds: watch it go retry -> retry -> success."""

    retry_delay = 1

    def run(self, params: dict[str, Any]) -> Any:
        job = get_current_job()
        tries = job.data.get("retry_count", 0) if job and job.data else 0
        if tries < 2:
            log.warning("Remote service unavailable (try %d), retrying", tries + 1)
            retry_current_job()
        return f"succeeded after {tries} retries"


class Fail(Task):
    """Always raises: its traceback is stored on the job."""

    def run(self, params: dict[str, Any]) -> Any:
        raise RuntimeError(params.get("message", "this task always fails"))
