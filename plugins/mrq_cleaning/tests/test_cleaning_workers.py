"""The cleaning service inside real workers: SIGKILL, Redis losing its data, no double runs."""

from __future__ import annotations

import shutil
import time

import pytest
from mrq.context import connections, get_broker, setup_context
from mrq.job import Job, queue_job, queue_jobs
from mrq.logger import job_logs
from mrq.queue import Queue
from mrq.testing import ServerURLs, WorkerProcess, wait_for_idle, wait_until

T = "tests.tasks.general."

FAST = {"MRQ_CLEANING_DEAD_INTERVAL": "0.3", "MRQ_CLEANING_LOST_INTERVAL": "0.5",
        "MRQ_CLEANING_STARTED_INTERVAL": "1", "MRQ_CLEANING_GRACE": "1"}




def test_sigkill_during_a_10s_job_another_worker_finishes_it(mrq_worker_factory):
    first = mrq_worker_factory(FAST).start("--plugins", "cleaning", "--greenlets", "2")
    job_id = queue_job(T + "Sleep", {"t": 10, "result": "done"})
    first_id = first.report()["_id"]
    wait_until(lambda: Job(job_id).fetch().data.get("worker") == first_id, what="job started on the first worker")
    second = mrq_worker_factory(FAST).start("--plugins", "cleaning", "--greenlets", "2")
    time.sleep(0.5)
    first.kill()
    killed_at = time.monotonic()
    second_id = second.report()["_id"]
    wait_until(lambda: Job(job_id).fetch().data.get("worker") == second_id, timeout=15, what="job restarted")
    print(f"requeued and restarted {time.monotonic() - killed_at:.1f} s after SIGKILL")
    assert Job(job_id).wait(timeout=20) == "done"
    assert job_logs(job_id).count("sleeping 10") == 2
    wait_until(lambda: second.report()["cleaning"]["dead_worker"] == 1, timeout=5, what="counter in the report")
    assert second.report()["cleaning"]["requeued"] == 1
    assert second.stop() == 0


def test_no_job_is_requeued_while_its_first_run_is_alive(mrq_worker_factory):
    """Two workers with every pass every fraction of a second and a 0.2 s grace period, jobs longer than
    that, and a backlog waiting in Redis longer than the grace period: each job runs exactly once."""
    env = {"MRQ_CLEANING_DEAD_INTERVAL": "0.2", "MRQ_CLEANING_LOST_INTERVAL": "0.2",
           "MRQ_CLEANING_STARTED_INTERVAL": "0.2", "MRQ_CLEANING_GRACE": "0.2", "MRQ_CLEANING_TIMEOUT_MARGIN": "0"}
    workers = [mrq_worker_factory(env).start("--plugins", "cleaning", "--greenlets", "4") for _ in range(2)]
    ids = queue_jobs(T + "Sleep", [{"t": 1.2, "result": i} for i in range(24)])
    wait_for_idle(timeout=60)
    assert [Job(i).fetch().data["result"] for i in ids] == list(range(24))
    assert all(job_logs(i).count("sleeping") == 1 for i in ids)
    for w in workers:
        assert w.stop() == 0
        cleaning = w.report()["cleaning"]
        assert cleaning["requeued"] == 0, cleaning
    passes = sum(w.report()["cleaning"].get("pass_lost", 0) for w in workers)
    assert passes >= 5  # the passes did run, alternately, while the jobs were waiting and running


@pytest.fixture
def restartable(request, redis_restartable, mrq_urls):
    """MRQ pointed at a Redis server this test may stop, wipe and restart, and the session's MongoDB."""
    urls = ServerURLs(redis=redis_restartable.url, mongodb=mrq_urls.mongodb)
    setup_context(redis=urls.redis, mongodb_jobs=urls.mongodb)
    workers: list[WorkerProcess] = []

    def make(env=None):
        workers.append(WorkerProcess(urls, str(request.config.rootpath), env))
        return workers[-1]

    try:
        yield make
    finally:
        for w in workers:
            w.kill()
        connections.reset()


def test_redis_loses_its_data_queues_are_rebuilt(restartable, redis_restartable):
    worker = restartable(FAST).start("--plugins", "cleaning", "--greenlets", "3")
    running = queue_job(T + "Sleep", {"t": 8, "result": "once"})
    waiting = queue_jobs(T + "Add", [{"a": i, "b": 0} for i in range(10)], queue="other")  # nobody listens
    delayed = queue_job(T + "Add", {"a": 1, "b": 1}, delay=4)
    wait_until(lambda: Job(running).fetch().data["status"] == "started", what="job started")
    wait_until(lambda: worker.report()["cleaning"].get("pass_rebuild"), what="first start's rebuild")

    redis_restartable.stop()
    for path in redis_restartable.data_dir.iterdir():     # the data is lost
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    redis_restartable.start()
    assert Queue("other").size() == 0  # lost (the worker's heartbeat may already have written its own keys)

    wait_until(lambda: Queue("other").size() == 10, what="queue rebuilt")
    assert get_broker().list_ids("other") == [str(i) for i in waiting]   # in their original order
    assert Job(delayed).wait(timeout=20) == 2                            # back in its delayed set
    assert Job(running).wait(timeout=20) == "once"
    assert job_logs(running).count("sleeping") == 1                      # its worker was alive: not requeued
    other = restartable(FAST).start("--plugins", "cleaning", queues=("other",))
    other.wait_for_idle()
    report = worker.report()["cleaning"]
    # The rebuild or the lost pass (whichever ran first after the loss) pushed each job once.
    assert report.get("rebuild_queued", 0) + report.get("lost_queued", 0) == 11, report
    assert report["requeued"] == 11, report
    # The running job was not requeued: its worker wrote its in-flight record again when it noticed the loss.
    assert [Job(i).fetch().data["result"] for i in waiting] == list(range(10))
    assert worker.stop() == 0
    assert other.stop() == 0


@pytest.fixture
def both_restartable(request, redis_restartable, mongodb_restartable):
    """MRQ pointed at a Redis and a MongoDB server that this test may stop and restart."""
    urls = ServerURLs(redis=redis_restartable.url, mongodb=mongodb_restartable.uri("mrq_cleaning_outage"))
    setup_context(redis=urls.redis, mongodb_jobs=urls.mongodb)
    workers: list[WorkerProcess] = []

    def make(env=None):
        workers.append(WorkerProcess(urls, str(request.config.rootpath), env))
        return workers[-1]

    try:
        yield make
    finally:
        for w in workers:
            w.kill()
        connections.reset()


@pytest.mark.parametrize("service", ["mongodb", "redis"])
def test_an_outage_never_makes_a_live_worker_look_dead(service, both_restartable, redis_restartable,
                                                        mongodb_restartable, tmp_path):
    """A job that logs runs on worker 1 through a 6 s outage (3x the heartbeat TTL); worker 2 cleans every
    0.3 s. Worker 1 is alive all along, so its job is not requeued: it runs once."""
    first = both_restartable(FAST).start("--plugins", "cleaning", "--greenlets", "2")
    runs = tmp_path / "runs"
    job_id = queue_job(T + "Record", {"t": 9, "file": str(runs)})
    wait_until(lambda: runs.exists(), what="job started on the first worker")
    second = both_restartable(FAST).start("--plugins", "cleaning", "--greenlets", "2")
    server = mongodb_restartable if service == "mongodb" else redis_restartable
    server.stop()
    time.sleep(6)
    server.start()
    assert Job(job_id).wait(timeout=40) == "recorded"
    time.sleep(3)  # a requeued copy would have started by now
    assert len(runs.read_text().splitlines()) == 1, runs.read_text()
    assert second.report()["cleaning"].get("dead_worker", 0) == 0
    assert first.stop() == 0 and second.stop() == 0


def test_a_raw_job_of_a_killed_worker_runs_again(mrq_worker_factory, tmp_path):
    """The in-flight record keeps a raw job's payload: the dead worker's job goes back into its raw queue."""
    import json
    from pathlib import Path

    from mrq.raw import queue_raw_jobs

    config = str(Path(__file__).resolve().parents[3] / "tests" / "configs" / "raw.py")
    runs = tmp_path / "runs"
    first = mrq_worker_factory(FAST).start("--config", config, "--plugins", "cleaning", queues=("fast_raw",))
    queue_raw_jobs("fast_raw", [json.dumps({"task": "Record", "file": str(runs), "t": 30})])
    wait_until(lambda: runs.exists(), what="job started")
    first.kill()
    second = mrq_worker_factory(FAST).start("--config", config, "--plugins", "cleaning", queues=("fast_raw",))
    wait_until(lambda: len(runs.read_text().splitlines()) == 2, timeout=20, what="the job run again")
    wait_until(lambda: second.report()["cleaning"]["dead_worker"] == 1, timeout=5, what="counted as a dead worker's")
