"""Enqueueing, reading and acting on jobs from a client process."""

from __future__ import annotations

import datetime

import pytest
from bson import ObjectId

from mrq.context import connections, get_broker
from mrq.exceptions import InvalidParams, JobNotFound, MRQError
from mrq.job import Job, get_job_result, queue_job, queue_jobs

T = "tests.tasks.general."


def test_queue_jobs_bulk(mrq_config):
    ids = queue_jobs(T + "Add", [{"a": i, "b": i} for i in range(2500)], batch_size=1000)
    assert len(ids) == 2500 and len(set(ids)) == 2500
    assert get_broker().list_ids("default", 0, 2) == [str(i) for i in ids[:3]]
    doc = connections.mongodb_jobs["mrq_jobs"].find_one({"_id": ids[0]})
    assert doc["status"] == "queued" and doc["queue"] == "default" and doc["retry_count"] == 0
    assert doc["dateexpires"] > datetime.datetime.utcnow() + datetime.timedelta(days=100)


def test_queue_from_tasks_config(mrq_urls):
    from mrq.context import setup_context
    setup_context(redis=mrq_urls.redis, mongodb_jobs=mrq_urls.mongodb, tasks={T + "Add": {"queue": "adds"}})
    try:
        job_id = queue_job(T + "Add", {"a": 1, "b": 2})
        assert Job(job_id).fetch().queue == "adds"
        assert get_broker().list_ids("adds") == [str(job_id)]
    finally:
        connections.reset()


@pytest.mark.parametrize("params, message", [
    ([1, 2], "must be a dict"),
    ({"when": object()}, "cannot be stored in MongoDB"),
    ({1: "int key"}, "cannot be stored in MongoDB"),
])
def test_bad_params_are_refused_before_any_write(mrq_config, params, message):
    with pytest.raises(InvalidParams, match=message):
        queue_jobs(T + "Add", [{"a": 1, "b": 1}, params])
    assert connections.mongodb_jobs["mrq_jobs"].count_documents({}) == 0
    assert get_broker().known_queues() == []


@pytest.mark.parametrize("path, queue", [("notdotted", None), (T + "Add", "has space"), (T + "Add", 5)])
def test_bad_path_or_queue(mrq_config, path, queue):
    with pytest.raises(InvalidParams):
        queue_job(path, {}, queue=queue)


def test_job_not_found(mrq_config):
    with pytest.raises(JobNotFound, match="No job with id"):
        Job(ObjectId()).fetch()
    with pytest.raises(JobNotFound, match="not a job id"):
        Job("nope")


def test_wait_timeout_and_result(mrq_config):
    job_id = queue_job(T + "Add", {"a": 1, "b": 2})
    with pytest.raises(TimeoutError):
        Job(job_id).wait(timeout=0.2, poll_interval=0.05)
    assert get_job_result(job_id) == {"status": "queued", "result": None}


def test_cancel_and_requeue_without_worker(mrq_config):
    job_id = queue_job(T + "Add", {"a": 1, "b": 2})
    job = Job(job_id)
    assert job.requeue() is False  # already queued
    assert job.cancel() is True
    assert job.fetch().status == "cancel"
    assert job.cancel() is False
    assert job.requeue(queue="other") is True
    assert job.fetch().data["queue"] == "other"
    assert get_broker().list_ids("other") == [str(job_id)]
    assert get_broker().list_ids("default") == []  # moved, not copied: it would run twice


def test_requeue_of_a_delayed_job_moves_it_out_of_its_delayed_set(mrq_config):
    broker = get_broker()
    job_id = queue_job(T + "Add", {"a": 1, "b": 2}, delay=600)
    assert Job(job_id).cancel() is True
    assert Job(job_id).requeue() is True
    assert broker.sizes(["default"]) == {"default": (1, 0)}  # runs now, not in 10 minutes (and only once)
    assert Job(job_id).cancel() is True
    assert Job(job_id).requeue(queue="elsewhere") is True
    assert broker.sizes(["default", "elsewhere"]) == {"default": (0, 0), "elsewhere": (1, 0)}


def test_requeue_refused_while_running_on_live_worker(mrq_config):
    broker = get_broker()
    job_id = queue_job(T + "Add", {"a": 1, "b": 2})
    broker.dequeue("w-live", ["default"], 1)
    connections.mongodb_jobs["mrq_jobs"].update_one({"_id": job_id}, {"$set": {"status": "started"}})
    broker.heartbeat("w-live", ttl=10)
    with pytest.raises(MRQError, match="running on worker w-live"):
        Job(job_id).requeue()
    broker.forget_worker("w-live")  # the worker died: requeue takes the in-flight record back
    assert Job(job_id).requeue() is True
    assert broker.inflight() == []
    assert broker.list_ids("default") == [str(job_id)]


def test_delay_sets_datedue(mrq_config):
    job_id = queue_job(T + "Add", {"a": 1, "b": 2}, delay=60)
    data = Job(job_id).fetch().data
    assert 59 < (data["datedue"] - data["datequeued"]).total_seconds() <= 60
    assert get_broker().sizes(["default"]) == {"default": (0, 1)}


def test_requeue_of_a_cancelled_job_still_in_its_list_pushes_it_once(mrq_config):
    job_id = queue_job(T + "Add", {"a": 1, "b": 2})
    assert Job(job_id).cancel() is True
    assert Job(job_id).requeue() is True
    assert get_broker().list_ids("default") == [str(job_id)]


@pytest.mark.parametrize("retry_count, draw, delay", [
    (0, 0.0, 1.5), (0, 1.0, 3.0),    # retry_delay 3, with "equal jitter": between half and all of it
    (1, 0.0, 3.0), (1, 1.0, 6.0),    # times retry_backoff 2 per retry already done
    (3, 0.0, 5.0), (3, 1.0, 10.0),   # 3 * 2 ** 3 = 24, capped at retry_max_delay 10
])
def test_retry_delay_backoff_jitter_and_cap(mrq_config, monkeypatch, retry_count, draw, delay):
    import dataclasses
    import time
    import types

    import gevent

    from mrq import job as job_module
    from mrq.task import task_settings

    monkeypatch.setattr(job_module, "random", types.SimpleNamespace(random=lambda: draw))
    settings = dataclasses.replace(task_settings(T + "Retry", mrq_config), retry_delay=3, retry_backoff=2,
                                   retry_max_delay=10, max_retries=4)
    job = Job(ObjectId(), {"path": T + "Retry", "params": {}, "queue": "q", "retry_count": retry_count})
    before = time.time()
    outcome = gevent.spawn(job.perform, settings).get()
    after = time.time()
    assert outcome.status == "retry" and outcome.delayed[0] == "q"
    assert before + delay <= outcome.delayed[1] <= after + delay
    assert outcome.set["retry_count"] == retry_count + 1


def test_retry_past_max_retries_ends_as_maxretries(mrq_config):
    import dataclasses

    import gevent

    from mrq.task import task_settings

    settings = dataclasses.replace(task_settings(T + "Retry", mrq_config), max_retries=4)
    job = Job(ObjectId(), {"path": T + "Retry", "params": {}, "queue": "q", "retry_count": 4})
    outcome = gevent.spawn(job.perform, settings).get()
    assert (outcome.status, outcome.delayed) == ("maxretries", None)


class _FailingInsert:
    """The jobs collection, with inserts that fail (MongoDB down or refusing the write)."""

    def __init__(self, collection) -> None:
        self.collection = collection

    def insert_many(self, *args, **kwargs):
        import pymongo.errors
        raise pymongo.errors.AutoReconnect("MongoDB went away")


def test_no_id_reaches_redis_when_the_insert_fails(mrq_config, monkeypatch):
    """queue_jobs inserts the documents first, then pushes their ids: an id without a document never waits."""
    import pymongo.errors

    from mrq import job as job_module

    real = job_module._jobs_collection()
    monkeypatch.setattr(job_module, "_jobs_collection", lambda: _FailingInsert(real))
    with pytest.raises(pymongo.errors.AutoReconnect):
        queue_jobs(T + "Add", [{"a": 1, "b": 1}])
    with pytest.raises(pymongo.errors.AutoReconnect):
        queue_jobs(T + "Add", [{"a": 1, "b": 1}], delay=60)
    assert get_broker().known_queues() == [] and get_broker().sizes(["default"]) == {"default": (0, 0)}


@pytest.mark.parametrize("delay", [0, 7])
def test_an_explicit_retry_delay_is_used_as_given(mrq_config, delay):
    """retry_current_job(delay=0) runs the job again at once: no backoff, no jitter."""
    import time

    import gevent

    from mrq.task import task_settings

    job = Job(ObjectId(), {"path": T + "Retry", "params": {"delay": delay}, "queue": "q", "retry_count": 2})
    before = time.time()
    outcome = gevent.spawn(job.perform, task_settings(T + "Retry", mrq_config)).get()
    assert before + delay <= outcome.delayed[1] <= time.time() + delay


@pytest.mark.parametrize("path, status, ttl_key", [
    (T + "Add", "success", "result_ttl"), (T + "Abort", "abort", "abort_ttl"), (T + "Fail", "failed", "default_ttl")])
def test_each_end_keeps_the_document_for_its_ttl(mrq_config, path, status, ttl_key):
    import dataclasses

    import gevent

    from mrq.task import task_settings

    settings = dataclasses.replace(task_settings(path, mrq_config), result_ttl=100, abort_ttl=200, default_ttl=300)
    job = Job(ObjectId(), {"path": path, "params": {"a": 1, "b": 1}, "queue": "q"})
    outcome = gevent.spawn(job.perform, settings).get()
    assert outcome.status == status
    kept = (outcome.set["dateexpires"] - outcome.set["dateupdated"]).total_seconds()
    assert kept == getattr(settings, ttl_key)


def test_requeue_resets_the_retry_count_unless_told_to_keep_it(mrq_config):
    job_id = queue_job(T + "Add", {"a": 1, "b": 2})
    jobs = connections.mongodb_jobs["mrq_jobs"]
    jobs.update_one({"_id": job_id}, {"$set": {"status": "maxretries", "retry_count": 3}})
    assert Job(job_id).requeue() is True
    assert Job(job_id).fetch().data["retry_count"] == 0  # a job that ran out of retries gets them all again
    jobs.update_one({"_id": job_id}, {"$set": {"status": "failed", "retry_count": 3}})
    assert Job(job_id).requeue(retry_count=None) is True
    assert Job(job_id).fetch().data["retry_count"] == 3


def test_the_task_class_settings_apply_when_enqueuing_and_cancelling(mrq_config):
    """TASKS, then the class attributes, then the defaults: for queue_job's queue and TTL and cancel's TTL."""
    job_id = queue_job(T + "Configured", {})
    data = Job(job_id).fetch().data
    assert data["queue"] == "classq" and get_broker().list_ids("classq") == [str(job_id)]
    assert 499 <= (data["dateexpires"] - data["datequeued"]).total_seconds() <= 500
    assert Job(job_id).cancel() is True
    data = Job(job_id).fetch().data
    assert 699 <= (data["dateexpires"] - data["dateupdated"]).total_seconds() <= 700
    mrq_config["tasks"] = {T + "Configured": {"queue": "tasksq", "default_ttl": 50}}
    data = Job(queue_job(T + "Configured", {})).fetch().data
    assert data["queue"] == "tasksq"
    assert 49 <= (data["dateexpires"] - data["datequeued"]).total_seconds() <= 50
    data = Job(queue_job("no.such.module.Task", {})).fetch().data  # not importable here: the defaults
    assert data["queue"] == "default"


# -- caller-given ids: unique jobs ---------------------------------------------------------------------------

def test_a_given_job_id_is_created_once(mrq_config):
    from bson import ObjectId

    from mrq.job import job_id_for

    given = ObjectId()
    assert queue_job(T + "Add", {"a": 1, "b": 2}, job_id=given) == given
    assert queue_job(T + "Add", {"a": 9, "b": 9}, job_id=str(given)) == given  # exists: nothing created
    assert Job(given).fetch().data["params"] == {"a": 1, "b": 2}
    assert get_broker().list_ids("default") == [str(given)]
    key_id = queue_job(T + "Add", {"a": 1, "b": 1}, unique_key="invoice:42")
    assert key_id == job_id_for("invoice:42") == queue_job(T + "Add", {"a": 1, "b": 1}, unique_key="invoice:42")
    ids = [ObjectId(), given, ObjectId()]
    assert queue_jobs(T + "Add", [{"a": i, "b": 0} for i in range(3)], job_ids=ids) == ids
    assert get_broker().list_ids("default") == [str(given), str(key_id), str(ids[0]), str(ids[2])]
    assert connections.mongodb_jobs["mrq_jobs"].count_documents({}) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"job_id": "nope"}, "is not an ObjectId"),
    ({"job_id": 12}, "is not an ObjectId"),
    ({"unique_key": ""}, "non-empty string"),
    ({"unique_key": "k", "job_id": "0" * 24}, "not both"),
    ({"queue": "crawl_set"}, "is a raw queue"),
])
def test_bad_job_ids_are_refused_before_anything_is_written(mrq_config, kwargs, message):
    with pytest.raises(InvalidParams, match=message):
        queue_job(T + "Add", {"a": 1, "b": 2}, **kwargs)
    assert connections.mongodb_jobs["mrq_jobs"].count_documents({}) == 0 and get_broker().known_queues() == []


_ENQUEUER = """
from gevent import monkey; monkey.patch_all()
import sys, gevent
from mrq.context import setup_context
from mrq.job import queue_jobs
setup_context(redis=sys.argv[1], mongodb_jobs=sys.argv[2])
ids = sys.argv[3].split(",")
gevent.joinall([gevent.spawn(queue_jobs, "tests.tasks.general.Add", [{"a": 1, "b": 1}] * len(ids), job_ids=ids)
                for _ in range(20)], raise_error=True)
"""


def test_concurrent_enqueuers_of_the_same_ids_create_each_job_once(mrq_config, mrq_urls, pytestconfig):
    """5 processes of 20 greenlets each enqueue the same 30 ids at once: 30 documents, each id queued once."""
    import subprocess
    import sys

    from bson import ObjectId

    ids = [str(ObjectId()) for _ in range(30)]
    procs = [subprocess.Popen([sys.executable, "-c", _ENQUEUER, mrq_urls.redis, mrq_urls.mongodb, ",".join(ids)],
                              cwd=pytestconfig.rootpath, start_new_session=True) for _ in range(5)]
    assert [p.wait(60) for p in procs] == [0] * 5
    assert connections.mongodb_jobs["mrq_jobs"].count_documents({}) == 30
    assert sorted(get_broker().list_ids("default")) == sorted(ids)


@pytest.mark.parametrize("delay", [0, 60])
def test_retrying_an_enqueue_whose_push_failed_queues_the_job_once(mrq_config, monkeypatch, delay):
    """queue_job(job_id=...) inserts the document, then the Redis push fails and the call raises. The natural
    retry finds the document still queued with its id in no queue: it pushes it (on the document's queue, with its
    delay), once; a retry after that pushes nothing (it used to return the id, queued nowhere: the scheduler's
    next check then claimed the period, and the job never ran)."""
    import redis

    from mrq.broker import Broker

    push = Broker.push

    def failing(self, *args, **kwargs):
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(Broker, "push", failing)
    with pytest.raises(redis.ConnectionError):
        queue_job(T + "Add", {"a": 1, "b": 2}, unique_key="report-2026-12-02", delay=delay)
    monkeypatch.setattr(Broker, "push", push)
    broker = get_broker()
    assert broker.sizes(["default"]) == {"default": (0, 0)}
    for _ in range(2):
        job_id = queue_job(T + "Add", {"a": 1, "b": 2}, unique_key="report-2026-12-02", delay=delay)
        assert broker.sizes(["default"]) == {"default": (0, 1) if delay else (1, 0)}
    if delay:
        assert 50 < broker.redis.zscore(broker.delayed_key("default"), str(job_id)) - __import__("time").time() <= 60
    else:
        assert broker.list_ids("default") == [str(job_id)]


def test_a_second_copy_of_an_id_in_flight_is_dropped_by_the_dequeue(mrq_config):
    """Two enqueuers raced and pushed one id twice: the copy popped while the first is in flight is dropped."""
    broker = get_broker()
    broker.push("default", ["a", "a", "b"])
    assert broker.dequeue("w1", ["default"], 1) == [("default", "a")]
    assert broker.dequeue("w2", ["default"], 2) == [("default", "b")]
    assert broker.inflight("w1")[0].job_id == "a"


def test_an_enqueue_of_the_id_of_a_job_its_enqueuer_never_pushed_pushes_it(mrq_config):
    """Its enqueuer died between the insert and the push (nothing marked): once the document is older than
    PUSH_GRACE, an enqueue of the same id pushes it; a younger one is left to its enqueuer, maybe still pushing."""
    from mrq.job import PUSH_GRACE, utcnow

    jobs = connections.mongodb_jobs["mrq_jobs"]
    young, old = ObjectId(), ObjectId()
    for job_id, age in ((young, 0), (old, PUSH_GRACE + 1)):
        when = utcnow() - datetime.timedelta(seconds=age)
        jobs.insert_one({"_id": job_id, "path": T + "Add", "params": {}, "queue": "default", "status": "queued",
                         "datequeued": when, "dateupdated": when, "retry_count": 0})
    assert queue_jobs(T + "Add", [{}, {}], job_ids=[young, old]) == [young, old]
    assert get_broker().list_ids("default") == [str(old)]
