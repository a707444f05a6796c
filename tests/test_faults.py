"""Servers restarting under a running worker: it waits, reconnects, and loses no status write."""

from __future__ import annotations

import time

import pytest

from mrq.context import connections, setup_context
from mrq.job import Job, queue_jobs
from mrq.testing import ServerURLs, WorkerProcess, wait_for_idle

T = "tests.tasks.general."


@pytest.fixture
def restartable_urls(request, redis_restartable, mongodb_restartable):
    urls = ServerURLs(redis=redis_restartable.url, mongodb=mongodb_restartable.uri("mrq_faults"))
    setup_context(redis=urls.redis, mongodb_jobs=urls.mongodb)
    worker = WorkerProcess(urls, str(request.config.rootpath))
    try:
        yield urls, worker
    finally:
        worker.kill()
        connections.reset()


@pytest.mark.parametrize("service", ["redis", "mongodb"])
def test_server_restart_during_jobs(service, restartable_urls, redis_restartable, mongodb_restartable):
    urls, worker = restartable_urls
    worker.start("--greenlets", "4")
    ids = queue_jobs(T + "Sleep", [{"t": 2, "result": i} for i in range(4)])
    time.sleep(0.7)
    server = redis_restartable if service == "redis" else mongodb_restartable
    old_pid = server.pid
    server.stop()
    time.sleep(2.5)  # the jobs end while the server is down: their status writes must wait
    server.start()
    assert server.pid != old_pid
    more = queue_jobs(T + "Add", [{"a": 1, "b": i} for i in range(3)])
    wait_for_idle(timeout=60)
    assert [Job(i).fetch().data["result"] for i in ids] == [0, 1, 2, 3]
    assert [Job(i).fetch().data.get("result") for i in more] == [1, 2, 3]
    assert worker.proc.poll() is None, "the worker must survive the outage"
    assert worker.stop() == 0
