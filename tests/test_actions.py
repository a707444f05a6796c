"""mrq.actions: the job filter (operator injection refused, prefixes escaped) and bulk cancel/requeue by filter
(the original JobAction), against real servers and a real worker."""

from __future__ import annotations

import datetime
import time

import pytest
from bson import ObjectId

from mrq.actions import build_query, cancel_jobs, count_matching, requeue_jobs
from mrq.context import get_broker
from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import Queue

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
    oid = ObjectId()
    assert build_query({"id": str(oid), "worker": [oid, str(oid)]}) == {"_id": oid, "worker": {"$in": [oid, oid]}}
    assert build_query({"path": "tasks.io.*", "exceptiontype": ["KeyError", "Value*"]}) == {
        "path": {"$regex": "^tasks\\.io\\."},
        "$or": [{"exceptiontype": {"$regex": "^Value"}}, {"exceptiontype": "KeyError"}]}
    assert build_query({"queue": ["a/", "b"], "path": ["x*", "y"]}) == {"$and": [   # two $or: combined with $and
        {"$or": [{"queue": {"$regex": "^a/"}}, {"queue": "b"}]}, {"$or": [{"path": {"$regex": "^x"}}, {"path": "y"}]}]}
    assert build_query({"after": "2026-01-02T03:04:05Z", "before": datetime.datetime(2026, 2, 1)}) == {
        "dateupdated": {"$gte": datetime.datetime(2026, 1, 2, 3, 4, 5), "$lt": datetime.datetime(2026, 2, 1)}}


@pytest.mark.parametrize("filters, message", [
    ({"params": {"$where": "sleep(1000)"}}, "starts with '\\$'"),
    ({"params": '{"$where": "1"}'}, "starts with '\\$'"),
    ({"params": {"user.$ne": 1}}, "starts with '\\$'"),
    ({"params": {"user": {"$gt": ""}}}, "is a dict"),
    ({"params": {"user": ["a"]}}, "is a list"),
    ({"params": {"user": "$name"}}, "starts with '\\$'"),
    ({"params": "{not json"}, "not valid JSON"),
    ({"params": "[1, 2]"}, "must be an object"),
    ({"queue": {"$ne": None}}, "is a dict"),
    ({"path": "$where"}, "starts with '\\$'"),
    ({"status": [{"$gt": ""}]}, "is a dict"),
    ({"id": "not-an-id"}, "not an id"),
    ({"worker": {"$exists": True}}, "is a dict"),
    ({"after": "yesterday"}, "not an ISO date"),
    ({"queue": ["q"] * 1001}, "at most 1000"),
    ({"$where": "1"}, "Unknown job filter"),
])
def test_build_query_refuses_operator_injection(filters, message):
    with pytest.raises(ValueError, match=message):
        build_query(filters)


def test_wildcards_are_escaped(mrq_config):
    """A value full of regex syntax matches itself literally (no catastrophic regex reaches the server)."""
    evil = "(a+)+$" * 5
    queue_job(T + "Add", {"a": 1, "b": 1}, queue="x" + evil.replace("$", "S"))
    assert build_query({"path": evil + "*"}) == {"path": {"$regex": "^" + __import__("re").escape(evil)}}
    assert count_matching({"queue": "x(a+)+S*"}, "cancel") == 1
    assert count_matching({"queue": "x[(]*"}, "cancel") == 0      # a class, if it were a regex: literal here
    assert count_matching({"queue": "x.*"}, "cancel") == 0        # '.' is literal too
    assert count_matching({"path": evil + "*"}, "cancel") == 0


def test_mrq_cleaning_actions_reexports_the_kernel():
    import mrq_cleaning.actions as old

    import mrq.actions

    assert old.cancel_jobs is mrq.actions.cancel_jobs and old.requeue_jobs is mrq.actions.requeue_jobs


def test_cancel_queued_by_queue_prefix(mrq_config):
    a = queue_jobs(T + "Add", [{"a": 1, "b": i} for i in range(3)], queue="crawl/a")
    b = queue_jobs(T + "Add", [{"a": 2, "b": i} for i in range(2)], queue="crawl/b")
    other = queue_job(T + "Add", {"a": 3, "b": 3}, queue="crawlers")
    assert count_matching({"queue": "crawl/"}, "cancel") == 5
    assert count_matching({"queue": "crawl/"}, "requeue") == 0       # queued jobs are not requeued
    assert cancel_jobs({"queue": "crawl/"}) == {"matched": 5, "cancelled": 5, "stopped": 0}
    assert count_matching({"queue": "crawl/"}, "requeue") == 5
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


def test_run_as_a_task_only_jobs_queued_before_it_are_touched():
    """Inside a job, the filter ends at the end of the second of the job's id: ids of other processes made in
    that second do not sort by time, so a plain ``_id <= job id`` could skip jobs queued just before."""
    from mrq.context import set_current_job

    job = Job(ObjectId.from_datetime(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)))
    set_current_job(job)
    try:
        assert build_query({"queue": "q"}) == {
            "queue": "q", "_id": {"$lt": ObjectId.from_datetime(datetime.datetime(2026, 1, 2, 3, 4, 6))}}
    finally:
        set_current_job(None)
    assert build_query({"queue": "q"}) == {"queue": "q"}


def test_action_statuses_merge_with_the_filter(mrq_config):
    """One status condition (served by an index), not an $and of two; and only statuses the action touches."""
    from mrq.actions import _with_status

    assert _with_status({"queue": "q", "status": "failed"}, {"failed", "success"}) == {"queue": "q", "status": "failed"}
    assert _with_status({"status": {"$in": ["failed", "queued"]}}, {"queued", "started"}) == {"status": "queued"}
    assert _with_status({"status": "success"}, {"queued"}) == {"status": {"$in": []}}
    assert _with_status({}, {"b", "a"}) == {"status": {"$in": ["a", "b"]}}
    queue_job(T + "Add", {"a": 1, "b": 1})
    assert count_matching({"status": "success"}, "cancel") == 0 and count_matching({"status": "queued"}, "cancel") == 1
