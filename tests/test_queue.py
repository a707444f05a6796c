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
