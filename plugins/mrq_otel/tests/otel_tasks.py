"""Tasks of mrq-otel's tests."""

from __future__ import annotations

import random
from typing import Any

import gevent
from mrq.context import get_current_job, log, queue_job, retry_current_job, subpool_map
from mrq.task import Task
from opentelemetry import trace

TRACER = trace.get_tracer("otel_tasks")


def _span_id() -> str:
    return format(trace.get_current_span().get_span_context().span_id, "016x")


class Child(Task):
    def run(self, params: dict[str, Any]) -> Any:
        log.info("child runs")
        return params.get("n", 0)


class Parent(Task):
    """Queues a sub-job from its own greenlet, and one from a greenlet of its subpool."""

    def run(self, params: dict[str, Any]) -> Any:
        log.info("parent runs")
        ids = [str(queue_job("otel_tasks.Child", {"n": 1}, queue=params.get("queue", "default")))]
        if params.get("subpool"):
            ids += subpool_map(2, lambda n: str(queue_job("otel_tasks.Child", {"n": n}, queue="default")), [2])
        return ids


class Retry(Task):
    """Retried at once ``times`` times, then succeeds."""

    def run(self, params: dict[str, Any]) -> Any:
        log.info("attempt %s", get_current_job().data.get("retry_count"))
        if (get_current_job().data.get("retry_count") or 0) < params.get("times", 2):
            retry_current_job(delay=0, max_retries=10)
        return "done"


class Fail(Task):
    def run(self, params: dict[str, Any]) -> Any:
        raise ValueError("kaput")


class Interleaved(Task):
    """Yields to the other greenlets several times; each time checks that the current span is still its own
    process span; makes a child span and logs. Returns what it saw: ``(process span id, mismatches)``."""

    def run(self, params: dict[str, Any]) -> Any:
        mine = _span_id()
        wrong = 0
        for i in range(params.get("switches", 3)):
            gevent.sleep(random.random() * params.get("sleep", 0.002))
            wrong += _span_id() != mine
            with TRACER.start_as_current_span("step", attributes={"job": str(get_current_job().id), "i": i}):
                gevent.sleep(0)
                log.info("step %d", i)
            wrong += _span_id() != mine
        return [mine, wrong]
