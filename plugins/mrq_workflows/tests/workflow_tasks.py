"""Tasks of mrq-workflows' tests (on the workers' path through PYTHONPATH)."""

from __future__ import annotations

import os
from typing import Any

import gevent
from mrq.context import abort_current_job, get_current_job, queue_job, retry_current_job
from mrq.exceptions import MaxConcurrencyInterrupt, MrqInterrupt
from mrq.task import Task

from mrq_workflows import results, step, wait_for


class _WorkerDeaths(MrqInterrupt):
    status = "maxworkerdeaths"


class End(Task):
    """Ends with ``params["status"]``, as a worker would store it (success returns ``params.get("value")``)."""

    def run(self, params: dict[str, Any]) -> Any:
        status = params.get("status", "success")
        if status == "failed":
            raise ValueError("failed on purpose")
        if status == "maxretries":
            retry_current_job(max_retries=0)
        if status == "abort":
            abort_current_job()
        if status == "maxconcurrency":
            raise MaxConcurrencyInterrupt("no slot (on purpose)")
        if status == "maxworkerdeaths":
            raise _WorkerDeaths()
        if status == "retry_once" and not (get_current_job().data or {}).get("retry_count"):  # type: ignore[union-attr]
            retry_current_job(delay=0.5)
        return params.get("value")


class Slow(Task):
    """Sleeps ``params["t"]`` seconds: with its 1 s timeout, ``t`` = 5 ends as ``timeout``."""

    timeout = 1

    def run(self, params: dict[str, Any]) -> Any:
        gevent.sleep(params.get("t", 0))
        return params.get("value")


class Sum(Task):
    """A group's callback: the sum of its parents' results."""

    def run(self, params: dict[str, Any]) -> Any:
        return sum(r.get("result") or 0 for r in results())


class Crawl(Task):
    """Fan-out found at run time: queues one child per page; the jobs waiting for this one wait for them too."""

    def run(self, params: dict[str, Any]) -> Any:
        children = [queue_job("workflow_tasks.End", {"value": n}) for n in range(params["pages"])]
        wait_for(children)
        return len(children)


class ThreeSteps(Task):
    """Three durable steps; each appends its name to ``params["file"]`` (the side effect the test counts); step 3
    sleeps ``params["t3"]`` seconds first (time for the test to kill the worker)."""

    def run(self, params: dict[str, Any]) -> Any:
        def effect(name: str) -> str:
            with open(params["file"], "a") as f:
                f.write(f"{name} {os.getpid()}\n")
            return f"{name}-done"

        with step("one") as s1:
            if s1.todo:
                s1.result = effect("one")
        two = step("two").run(effect, "two")
        with step("three") as s3:
            if s3.todo:
                with open(params["file"], "a") as f:
                    f.write(f"three-started {os.getpid()}\n")
                gevent.sleep(params.get("t3", 0))
                s3.result = effect("three")
        return [s1.result, two, s3.result]
