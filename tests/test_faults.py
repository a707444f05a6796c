"""Servers restarting under a running worker: it waits, reconnects, and loses no status write."""

from __future__ import annotations

import time

import pytest

from mrq.context import connections, setup_context
from mrq.job import Job, queue_jobs
from mrq.testing import ServerURLs, WorkerProcess, wait_for_idle, wait_until

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
    # The worker's MongoDB calls fail after 0.5 s instead of pymongo's 30 s wait for a server: the outage reaches
    # MRQ's own retries (of the status writer, of the fetch of dequeued jobs), not only pymongo's.
    fail_fast = urls.mongodb + ("&" if "?" in urls.mongodb else "?") + "serverSelectionTimeoutMS=500"
    worker.start("--greenlets", "4", env={"MRQ_MONGODB_JOBS": fail_fast})
    ids = queue_jobs(T + "Sleep", [{"t": 2, "result": i} for i in range(4)])
    # These wait for a free slot: the worker pops them during the outage and must keep them until it can fetch
    # their documents (MongoDB) or pop them at all (Redis).
    waiting = queue_jobs(T + "Add", [{"a": 1, "b": i} for i in range(10, 12)])
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
    assert [Job(i).fetch().data.get("result") for i in waiting] == [11, 12]
    assert worker.proc.poll() is None, "the worker must survive the outage"
    assert worker.stop() == 0


@pytest.mark.parametrize("service", ["mongodb", "redis"])
def test_the_heartbeat_never_waits_on_mongodb(service, restartable_urls, redis_restartable, mongodb_restartable,
                                              tmp_path):
    """A job that logs runs through a 5 s outage (longer than the 2 s heartbeat TTL of the tests' workers):
    during a MongoDB outage the heartbeat stays current all along (it talks to Redis only; the logs wait in
    their own greenlet), and after a Redis outage it is back within a second; the job runs once."""
    from mrq.context import get_broker

    urls, worker = restartable_urls
    worker.start("--greenlets", "2")
    worker_id = str(worker.report()["_id"])
    runs = tmp_path / "runs"
    job_id = queue_jobs(T + "Record", [{"t": 8, "file": str(runs)}])[0]
    wait_until(lambda: runs.exists(), what="job started")
    broker = get_broker()
    server = mongodb_restartable if service == "mongodb" else redis_restartable
    server.stop()
    deadline, missed = time.monotonic() + 5, []
    while time.monotonic() < deadline:
        if service == "mongodb" and not broker.alive([worker_id])[worker_id]:
            missed.append(round(5 - (deadline - time.monotonic()), 1))
        time.sleep(0.2)
    server.start()
    assert missed == [], f"heartbeat missing during the MongoDB outage at {missed} s"
    wait_until(lambda: broker.alive([worker_id])[worker_id], timeout=3, what="heartbeat back after the outage")
    assert Job(job_id).wait(timeout=30) == "recorded"
    assert len(runs.read_text().splitlines()) == 1
    assert worker.stop() == 0
