"""End-to-end worker behaviour on real Redis and MongoDB servers."""

from __future__ import annotations

import signal

from mrq.job import Job, queue_job, queue_jobs
from mrq.logger import job_logs

T = "tests.tasks.general."


def test_simple_job_end_to_end(mrq_worker):
    mrq_worker.start("--greenlets", "2")
    job_id = queue_job(T + "Add", {"a": 41, "b": 1})
    mrq_worker.wait_for_idle()
    job = Job(job_id).fetch()
    assert job.data["status"] == "success"
    assert job.data["result"] == 42
    assert job.data["worker"] == mrq_worker.report()["_id"]
    assert job.data["datestarted"] <= job.data["dateupdated"]
    assert mrq_worker.stop() == 0
    assert "adding 41 and 1" in job_logs(job_id)
    report = mrq_worker.report()
    assert report["status"] == "stop"
    assert report["counters"]["success"] == 1


def test_function_task_and_failure(mrq_worker):
    mrq_worker.start()
    ok = queue_job(T + "add", {"a": 1, "b": 2})
    bad = queue_job(T + "Fail", {"message": "kaput"})
    missing = queue_job("tests.tasks.general.DoesNotExist", {})
    mrq_worker.wait_for_idle()
    assert Job(ok).fetch().data["result"] == 3
    data = Job(bad).fetch().data
    assert data["status"] == "failed"
    assert data["exceptiontype"] == "ValueError"
    assert "kaput" in data["traceback"]
    assert "pluggy" not in data["traceback"]
    assert len(data["traceback_history"]) == 1
    data = Job(missing).fetch().data
    assert data["status"] == "failed"
    assert data["exceptiontype"] == "TaskNotFound"
    assert "has no 'DoesNotExist'" in data["traceback"]


def test_many_jobs_concurrently(mrq_worker):
    mrq_worker.start("--greenlets", "20")
    ids = queue_jobs(T + "Sleep", [{"t": 0.5, "result": i} for i in range(40)])
    mrq_worker.wait_for_idle()
    results = [Job(i).fetch().data for i in ids]
    assert [r["result"] for r in results] == list(range(40))
    assert {r["status"] for r in results} == {"success"}


def test_sigint_finishes_running_jobs(mrq_worker):
    mrq_worker.start("--greenlets", "2")
    ids = queue_jobs(T + "Sleep", [{"t": 1.5}] * 2 + [{"t": 0.1}] * 3)
    import time
    time.sleep(0.8)
    assert mrq_worker.stop(signal.SIGINT) == 0
    statuses = [Job(i).fetch().data["status"] for i in ids]
    assert statuses[:2] == ["success", "success"]
    assert statuses[2:] == ["queued"] * 3


def test_sigterm_interrupts_and_requeues(mrq_worker, mrq_config):
    mrq_worker.start("--greenlets", "2")
    ids = queue_jobs(T + "Sleep", [{"t": 30}] * 2)
    import time
    time.sleep(0.8)
    assert mrq_worker.stop(signal.SIGTERM) == 0
    for i in ids:
        assert Job(i).fetch().data["status"] == "interrupt"
    from mrq.queue import Queue
    assert Queue("default").size() == 2
