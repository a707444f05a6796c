"""Bulk cancel and requeue by filter (the original JobAction), against real servers and a real worker."""

from __future__ import annotations

import time

import pytest
from mrq.context import get_broker
from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import Queue

from mrq_cleaning.actions import build_query, cancel_jobs, requeue_jobs

T = "tests.tasks.general."


def test_build_query():
    assert build_query({"queue": "a/", "status": ["failed", "retry"], "path": "x.Y"}) == {
        "queue": {"$regex": "^a/"}, "status": {"$in": ["failed", "retry"]}, "path": "x.Y"}
    assert build_query({"queue": ["a/", "b"], "params": '{"k": 1}'}) == {
        "$or": [{"queue": {"$regex": "^a/"}}, {"queue": "b"}], "params.k": 1}
    with pytest.raises(ValueError, match="Unknown job filter"):
        build_query({"colour": "red"})
    with pytest.raises(ValueError, match="Unknown status"):
        build_query({"status": "done"})


def test_cancel_queued_by_queue_prefix(mrq_config):
    a = queue_jobs(T + "Add", [{"a": 1, "b": i} for i in range(3)], queue="crawl/a")
    b = queue_jobs(T + "Add", [{"a": 2, "b": i} for i in range(2)], queue="crawl/b")
    other = queue_job(T + "Add", {"a": 3, "b": 3}, queue="crawlers")
    assert cancel_jobs({"queue": "crawl/"}) == {"matched": 5, "cancelled": 5, "stopped": 0}
    assert {Job(i).fetch().status for i in a + b} == {"cancel"}
    assert Job(other).fetch().status == "queued"
    assert cancel_jobs({"queue": "crawl/"}) == {"matched": 0, "cancelled": 0, "stopped": 0}


def test_cancel_stops_running_jobs_and_requeue_refuses_them(mrq_worker):
    mrq_worker.start("--greenlets", "3")
    running = queue_jobs(T + "Sleep", [{"t": 30}] * 2)
    deadline = time.time() + 10
    while time.time() < deadline and {Job(i).fetch().status for i in running} != {"started"}:
        time.sleep(0.05)
    assert requeue_jobs({"path": T + "Sleep"}) == {"matched": 2, "requeued": 0, "running": 2}
    t0 = time.time()
    assert cancel_jobs({"path": T + "Sleep"}) == {"matched": 2, "cancelled": 2, "stopped": 2}
    mrq_worker.wait_for_idle(timeout=10)
    assert time.time() - t0 < 3
    assert {Job(i).fetch().status for i in running} == {"cancel"}
    assert mrq_worker.report()["jobs"] == []


def test_requeue_pushes_each_id_once(mrq_worker):
    broker = get_broker()
    failed = queue_jobs(T + "Fail", [{"message": str(i)} for i in range(5)])
    mrq_worker.start("--greenlets", "3")
    mrq_worker.wait_for_idle()
    mrq_worker.stop()
    assert {Job(i).fetch().status for i in failed} == {"failed"}
    cancelled = queue_job(T + "Add", {"a": 1, "b": 1})           # still in its queue list once cancelled
    assert Job(cancelled).cancel()

    assert requeue_jobs({"status": "failed"}, queue="again") == {"matched": 5, "requeued": 5, "running": 0}
    assert requeue_jobs({"status": "failed"}) == {"matched": 0, "requeued": 0, "running": 0}
    assert requeue_jobs({"id": [str(i) for i in failed]}) == {"matched": 0, "requeued": 0, "running": 0}
    assert requeue_jobs({"status": "queued", "queue": "again"})["requeued"] == 5   # already in Redis:
    assert sorted(broker.list_ids("again")) == sorted(str(i) for i in failed)      # not pushed again
    assert requeue_jobs({"id": str(cancelled)}) == {"matched": 1, "requeued": 1, "running": 0}
    assert broker.list_ids("default") == [str(cancelled)]                          # there once, as before
    assert Queue("default").size() == 1

    mrq_worker.start(queues=("default", "again"))
    mrq_worker.wait_for_idle()
    for i in failed:
        data = Job(i).fetch().data
        assert (data["status"], data["queue"], len(data["traceback_history"])) == ("failed", "again", 2)
    assert Job(cancelled).fetch().data["result"] == 2
