"""Queue sizes, pause/resume and counts."""

from __future__ import annotations

import pytest

from mrq.exceptions import InvalidParams
from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import Queue, all_known_queues, count_jobs

T = "tests.tasks.general."


def test_sizes_listing_and_counts(mrq_config):
    ids = queue_jobs(T + "Add", [{"a": i, "b": 0} for i in range(3)], queue="q1")
    queue_job(T + "Add", {"a": 1, "b": 1}, queue="q2", delay=100)
    Job(ids[0]).cancel()
    assert Queue("q1").size() == 3  # a cancelled id stays in Redis until a worker skips it
    assert Queue("q2").size() == 0 and Queue("q2").delayed_size() == 1
    assert Queue("q1").list_job_ids(skip=1, limit=1) == [str(ids[1])]
    assert all_known_queues() == ["q1", "q2"]
    assert count_jobs() == {"q1": {"queued": 2, "cancel": 1}, "q2": {"queued": 1}}
    assert Queue("q1").counts() == {"queued": 2, "cancel": 1}
    Queue("q1").empty()
    assert Queue("q1").size() == 0


def test_pause_resume(mrq_config):
    q = Queue("jobs/")
    q.pause()
    assert Queue("jobs/eu").is_paused() and not Queue("jobs").is_paused()
    q.resume()
    assert not Queue("jobs/eu").is_paused()


def test_bad_name():
    with pytest.raises(InvalidParams, match="invalid"):
        Queue("a b")


@pytest.mark.parametrize("name", ["two words", "a,b", "sub/a b c", "tab\tq", "", "x_raw", "crawl_set/eu"])
def test_every_place_that_takes_a_queue_name_refuses_a_bad_one(mrq_config, name):
    """Job.requeue(queue=...), the bulk requeue and retry_current_job(queue=...) check the name as queue_job does
    (and refuse a raw queue: its members are payloads): nothing is changed. A name with a space written in an
    in-flight record made every in-flight read raise."""
    from mrq.actions import requeue_jobs
    from mrq.context import get_broker, retry_current_job
    from mrq.job import Job, queue_job

    job_id = queue_job("tests.tasks.general.Add", {"a": 1, "b": 2})
    assert Job(job_id).cancel()
    with pytest.raises(InvalidParams, match="invalid|raw queue"):
        Job(job_id).requeue(queue=name)
    with pytest.raises(InvalidParams, match="invalid|raw queue"):
        requeue_jobs({}, queue=name)
    with pytest.raises(InvalidParams, match="invalid|raw queue"):
        retry_current_job(queue=name)
    data = Job(job_id).fetch().data
    assert (data["status"], data["queue"]) == ("cancel", "default")
    assert get_broker().known_queues() == ["default"]


def test_an_in_flight_record_with_a_spaced_queue_name_reads_as_a_regular_job(mrq_config):
    """Records written before queue names were checked everywhere: read, never a ValueError for every reader."""
    from mrq.context import get_broker

    broker = get_broker()
    broker.redis.hset(broker.inflight_key, mapping={"a": "w 1.5 sub/a b c", "b": "w 1.5 q_raw - x y", "c": "junk"})
    records = {r.job_id: r for r in broker.inflight()}
    assert (records["a"].queue, records["a"].payload) == ("sub/a b c", None)
    assert (records["b"].queue, records["b"].payload) == ("q_raw", "x y")
    assert "c" not in records  # unreadable: skipped, logged
