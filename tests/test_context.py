"""The process context: config, current job, subpools, run_task, outside a worker."""

from __future__ import annotations

import gevent
import pytest

from mrq import context
from mrq.exceptions import AbortInterrupt, RetryInterrupt
from mrq.job import Job


def test_setup_context_overrides(mrq_urls):
    config = context.setup_context(redis=mrq_urls.redis, mongodb_jobs=mrq_urls.mongodb, greenlets=7)
    try:
        assert context.get_current_config() is config
        assert config["greenlets"] == 7 and config.sources["greenlets"] == "extra"
        assert context.connections.mongodb_jobs.name == mrq_urls.mongodb.split("/")[3].split("?")[0]
        assert context.get_current_worker() is None
    finally:
        context.connections.reset()


def test_current_job_per_greenlet_and_subpools():
    job = Job(None, {"path": "x.y"})
    seen = []

    def work(i):
        seen.append(context.get_current_job())
        gevent.sleep(0.01)
        return i * 2

    def main():
        context.set_current_job(job)
        try:
            return context.subpool_map(3, work, range(6))
        finally:
            context.set_current_job(None)

    assert gevent.spawn(main).get() == [0, 2, 4, 6, 8, 10]
    assert seen == [job] * 6
    assert context.get_current_job() is None
    assert list(context.subpool_imap(0, lambda x: x + 1, [1, 2])) == [2, 3]
    assert sorted(context.subpool_imap(2, lambda x: x, [3, 1, 2], unordered=True)) == [1, 2, 3]


def test_subpool_errors_propagate_and_children_are_killed():
    finished = []

    def boom(i):
        if i == 0:
            raise KeyError("child failed")
        gevent.sleep(0.2)
        finished.append(i)

    with pytest.raises(KeyError, match="child failed"):
        context.subpool_map(3, boom, range(3))
    assert finished == []  # raised at once, without waiting for the other children...
    gevent.sleep(0.5)
    assert finished == []  # ... which were killed: they never finish

    # A job killed while it maps (timeout, cancel) takes its children with it.
    parent = gevent.spawn(context.subpool_map, 3, boom, range(1, 4))
    gevent.sleep(0.05)
    parent.kill()
    gevent.sleep(0.5)
    assert finished == []


def test_interrupt_helpers_and_run_task():
    with pytest.raises(RetryInterrupt) as info:
        context.retry_current_job(delay=5, queue="q", max_retries=2)
    assert (info.value.delay, info.value.queue, info.value.max_retries) == (5, "q", 2)
    with pytest.raises(AbortInterrupt):
        context.abort_current_job()
    assert context.run_task("tests.tasks.general.Add", {"a": 2, "b": 3}) == 5
    context.set_current_job_progress(0.5)  # outside a job: ignored


def test_set_current_job_progress(mrq_config):
    from mrq.job import queue_job

    job = Job(queue_job("tests.tasks.general.Add", {"a": 1, "b": 1})).fetch()
    other = Job(None, {"path": "x.y"})

    def run():
        context.set_current_job(job)
        try:
            context.set_current_job_progress(0.25)
            assert job.progress == 0.25 and job.fetch().data.get("progress") is None  # kept for the next report
            context.set_current_job_progress(1.7, save=True)                          # clamped, and stored now
            assert job.progress == 1.0 and job.fetch().data["progress"] == 1.0
        finally:
            context.set_current_job(None)

    gevent.spawn(run).get()
    assert other.progress is None
