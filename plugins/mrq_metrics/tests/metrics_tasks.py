"""Tasks that end in every status, for mrq-metrics' tests."""

from __future__ import annotations

from typing import Any

import gevent
from mrq.context import abort_current_job, retry_current_job
from mrq.task import Task


class Add(Task):
    def run(self, params: dict[str, Any]) -> Any:
        return params.get("a", 0) + params.get("b", 0)


class Fail(Task):
    def run(self, params: dict[str, Any]) -> Any:
        raise ValueError("kaput")


class Retry(Task):
    """Retries at once until ``max_retries`` is reached: ``retry`` that many times, then ``maxretries``."""

    def run(self, params: dict[str, Any]) -> Any:
        retry_current_job(delay=0, max_retries=params.get("max_retries", 1))


class Abort(Task):
    def run(self, params: dict[str, Any]) -> Any:
        abort_current_job()


class Sleep(Task):
    timeout = 30

    def run(self, params: dict[str, Any]) -> Any:
        gevent.sleep(params.get("t", 1))
        return "slept"


class Slow(Task):
    """Times out (its timeout is 0.3 s)."""

    timeout = 0.3

    def run(self, params: dict[str, Any]) -> Any:
        gevent.sleep(5)


class OneAtATime(Task):
    """max_concurrency 1, failing when the slot is taken: ``maxconcurrency``."""

    max_concurrency = 1
    on_max_concurrency = "fail"

    def run(self, params: dict[str, Any]) -> Any:
        gevent.sleep(params.get("t", 0.5))
        return "alone"
