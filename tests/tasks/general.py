"""Tasks the test suite runs in real worker processes."""

from __future__ import annotations

import os
from typing import Any

import gevent

from mrq.context import (
    abort_current_job,
    get_current_config,
    get_current_job,
    get_current_worker,
    log,
    queue_job,
    retry_current_job,
    run_task,
    set_current_job_progress,
    subpool_map,
)
from mrq.task import Task


class Add(Task):
    def run(self, params: dict[str, Any]) -> Any:
        log.info("adding %s and %s", params["a"], params["b"])
        return params["a"] + params["b"]


def add(a: int, b: int) -> int:
    return a + b


def noop(**params: Any) -> None:
    return None


class Fail(Task):
    def run(self, params: dict[str, Any]) -> Any:
        raise ValueError(params.get("message", "boom"))


class Sleep(Task):
    def run(self, params: dict[str, Any]) -> Any:
        log.info("sleeping %s", params.get("t", 1))
        gevent.sleep(params.get("t", 1))
        return params.get("result", "slept")


class SleepSwallowingTimeout(Task):
    def run(self, params: dict[str, Any]) -> Any:
        try:
            gevent.sleep(params.get("t", 5))
        except BaseException:  # noqa: BLE001 - tests that a swallowed timeout still counts
            gevent.sleep(params.get("then", 0))  # and, with "then", goes on working
            return "swallowed"
        return "slept"


class Retry(Task):
    def run(self, params: dict[str, Any]) -> Any:
        job = get_current_job()
        assert job is not None
        if job.data.get("retry_count", 0) < params.get("succeed_after", 10**6):
            retry_current_job(delay=params.get("delay"), max_retries=params.get("max_retries"),
                              queue=params.get("queue"))
        return job.data.get("retry_count", 0)


class RetryOn(Task):
    retry_on = (ConnectionError,)
    retry_delay = 0.2
    max_retries = 2

    def run(self, params: dict[str, Any]) -> Any:
        raise ConnectionError("flaky network")


class Abort(Task):
    def run(self, params: dict[str, Any]) -> Any:
        abort_current_job()


class Progress(Task):
    def run(self, params: dict[str, Any]) -> Any:
        for i in range(params.get("stop_after", params.get("steps", 4))):
            set_current_job_progress((i + 1) / params.get("steps", 4), save=params.get("save", False))
            gevent.sleep(params.get("t", 0.1))
        return "done"


class SubPool(Task):
    def run(self, params: dict[str, Any]) -> Any:
        def square(x: int) -> int:
            assert get_current_job() is not None
            log.info("square %s", x)
            gevent.sleep(params.get("t", 0))
            return x * x

        return subpool_map(params.get("pool_size", 3), square, params["values"])


class RunTask(Task):
    def run(self, params: dict[str, Any]) -> Any:
        return run_task("tests.tasks.general.Add", {"a": params["a"], "b": 1})


class Concurrent(Task):
    max_concurrency = 2

    def run(self, params: dict[str, Any]) -> Any:
        gevent.sleep(params.get("t", 1))
        return "ok"


class UnserialisableResult(Task):
    def run(self, params: dict[str, Any]) -> Any:
        return object()


class GetContext(Task):
    def run(self, params: dict[str, Any]) -> Any:
        job, worker, config = get_current_job(), get_current_worker(), get_current_config()
        assert job is not None and worker is not None
        return {"job_id": str(job.id), "worker_id": str(worker.id), "greenlets": config["greenlets"],
                "pid": os.getpid(), "custom": config.get("custom_key")}


class Record(Task):
    """Appends "<job id> <pid>" to the file ``params["file"]`` at each run (a record that needs neither Redis
    nor MongoDB), then logs a line every 0.25 s for ``params["t"]`` seconds."""

    def run(self, params: dict[str, Any]) -> Any:
        with open(params["file"], "a") as f:
            f.write(f"{get_current_job().id} {os.getpid()}\n")
        for i in range(int(params.get("t", 0) / 0.25)):
            log.info("tick %d", i)
            gevent.sleep(0.25)
        return params.get("result", "recorded")


class Chain(Task):
    """Sleeps ``params["t"]`` seconds, then queues a job of ``params["path"]``; returns its id."""

    def run(self, params: dict[str, Any]) -> Any:
        gevent.sleep(params.get("t", 0))
        return str(queue_job(params["path"], params.get("params", {})))


class Configured(Task):
    """Settings given as class attributes (a TASKS entry overrides them)."""

    queue = "classq"
    timeout = 42
    default_ttl = 500
    cancel_ttl = 700

    def run(self, params: dict[str, Any]) -> Any:
        return "configured"


class Throttled(Task):
    """At most 3 at once across all workers; returns its (start, end) unix times."""

    max_concurrency = 3

    def run(self, params: dict[str, Any]) -> Any:
        import time

        start = time.time()
        gevent.sleep(params.get("t", 0.3))
        return [start, time.time()]


class Crash(Task):
    """Kills its worker process (SIGABRT, as a crash in native code would), after recording the run."""

    def run(self, params: dict[str, Any]) -> Any:
        with open(params["file"], "a") as f:
            f.write(f"{os.getpid()}\n")
        os.abort()


class Hog(Task):
    """Allocates 20 MB every 0.1 s until stopped (a memory blow-up), after recording the run."""

    def run(self, params: dict[str, Any]) -> Any:
        with open(params["file"], "a") as f:
            f.write(f"{os.getpid()}\n")
        hoard = []
        while True:
            hoard.append(bytearray(20 * 1024 * 1024))
            gevent.sleep(0.1)


class Limited(Task):
    """At most one at a time across all workers. Appends "<job id> <pid> <unix time>" to ``params["file"]``, then
    aborts its worker (``params["crash"]``), or retries in ``params["retry_delay"]`` seconds on its first run, or
    sleeps ``params["t"]`` seconds."""

    max_concurrency = 1

    def run(self, params: dict[str, Any]) -> Any:
        import time

        job = get_current_job()
        with open(params["file"], "a") as f:
            f.write(f"{job.id} {os.getpid()} {time.time()}\n")
        if params.get("crash"):
            os.abort()
        if params.get("retry_delay") and not (job.data or {}).get("retry_count"):
            retry_current_job(delay=params["retry_delay"])
        gevent.sleep(params.get("t", 0))
        return "ok"
