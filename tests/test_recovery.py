"""Jobs of dead workers come back; a job that kills its workers is contained (mrq/recovery.py)."""

from __future__ import annotations

import subprocess

import pytest

from mrq import status as st
from mrq.job import Job, queue_job, queue_jobs
from mrq.recovery import WORKER_DIED
from mrq.testing import wait_until

T = "tests.tasks.general."
CLEANING_FAST = {"MRQ_CLEANING_DEAD_INTERVAL": "0.3", "MRQ_CLEANING_LOST_INTERVAL": "0.5",
                 "MRQ_CLEANING_GRACE": "1"}


def _runs(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _stop(worker) -> None:
    try:
        worker.stop()
    except (AssertionError, subprocess.TimeoutExpired):
        worker.kill()


@pytest.mark.parametrize("task, args", [
    ("Crash", ("--plugins", "cleaning")),               # the worker dies: the cleaning plugin counts it
    ("Hog", ("--max_memory", "200")),                   # --max_memory stops the worker: the worker counts it
])
def test_a_job_that_kills_its_workers_ends_as_maxworkerdeaths(mrq_worker, tmp_path, task, args):
    """Under --processes (workers respawned), a job that takes its worker down each time runs 3 times
    (--max_worker_deaths), then ends with its own final status, the deaths in its traceback_history; the jobs
    queued behind it run."""
    runs = tmp_path / "runs"
    poison = queue_job(T + task, {"file": str(runs)})
    good = queue_job(T + "Add", {"a": 1, "b": 2})
    mrq_worker.start("--processes", "2", *args, queues=("default",), env=CLEANING_FAST, wait=False)
    try:
        wait_until(lambda: Job(poison).fetch().status == st.MAXWORKERDEATHS, timeout=120, what="the poison contained")
        assert Job(good).wait(timeout=30) == 3
        data = Job(poison).fetch().data
        assert data["worker_deaths"] == 3 and data["exceptiontype"] == WORKER_DIED
        deaths = [h for h in data["traceback_history"] if h["exceptiontype"] == WORKER_DIED]
        assert len(deaths) == 3 and all(h["worker"] and h["date"] for h in deaths)
        assert "--max_worker_deaths" in data["traceback"]
        assert _runs(runs) == 3
        import time
        time.sleep(3)
        assert _runs(runs) == 3  # not requeued again
    finally:
        _stop(mrq_worker)
    assert Job(poison).requeue() is True  # a person can still run it again


def test_a_job_that_ended_before_its_worker_died_is_not_run_again(mrq_config):
    """The worker records a job's end in Redis before its status is stored; the recovery of a dead worker's jobs
    stores that end (and its Redis side) instead of requeueing the job."""
    import gevent
    from bson import ObjectId

    from mrq.context import connections, get_broker
    from mrq.job import Outcome
    from mrq.recovery import requeue_dead_worker_jobs
    from mrq.writer import StatusWriter

    broker = get_broker()
    ended, retried, running = (queue_job(T + "Add", {"a": i, "b": 0}) for i in range(3))
    worker = str(ObjectId())
    broker.dequeue(worker, ["default"], 3)

    class Stalled:  # MongoDB takes forever: the statuses are never stored before the "crash"
        def bulk_write(self, *args, **kwargs):
            gevent.sleep(3600)

    writer = StatusWriter(Stalled(), broker, 0.05)
    marks = gevent.spawn(writer.run_marks)
    loop = gevent.spawn(writer.run)
    writer.started(running, {"status": st.STARTED, "worker": ObjectId(worker)})
    writer.finished(ended, Outcome(st.SUCCESS, set={"status": st.SUCCESS, "result": 42}))
    writer.finished(retried, Outcome(st.RETRY, set={"status": st.RETRY, "retry_count": 1},
                                     delayed=("default", 1.0)))
    with gevent.Timeout(5):
        while len(broker.done_marks([str(ended), str(retried)])) < 2:
            gevent.sleep(0.01)
    gevent.killall([marks, loop])  # the worker dies: nothing was stored
    jobs = connections.mongodb_jobs["mrq_jobs"]
    assert {d["status"] for d in jobs.find()} == {"queued"}
    result = requeue_dead_worker_jobs(broker.inflight(worker), worker)
    assert sorted(result["recovered"]) == sorted([str(ended), str(retried)])
    assert result["requeued"] == [str(running)]                     # it was running: it runs again
    assert (Job(ended).fetch().data["result"], Job(ended).fetch().status) == (42, st.SUCCESS)
    assert Job(retried).fetch().status == st.RETRY
    assert get_broker().sizes(["default"])["default"] == (1, 1)    # 'running' requeued, 'retried' delayed
    assert broker.inflight() == [] and broker.done_marks([str(ended), str(retried)]) == {}


def test_a_poison_job_ended_maxworkerdeaths_frees_its_slot(mrq_worker_factory, tmp_path):
    """A job of a task limited to one at a time kills its worker: it ends as maxworkerdeaths (one death allowed
    here), and the slot it held is freed at once: the next job of the task runs (it used to wait an hour)."""
    runs = tmp_path / "runs"
    env = dict(CLEANING_FAST, MRQ_MAX_WORKER_DEATHS="1")
    victim = mrq_worker_factory(env).start()
    poison = queue_job(T + "Limited", {"file": str(runs), "crash": True})
    wait_until(lambda: victim.proc.poll() is not None, what="the worker killed")
    survivor = mrq_worker_factory(env).start("--plugins", "cleaning")
    try:
        wait_until(lambda: Job(poison).fetch().status == st.MAXWORKERDEATHS, timeout=30, what="the poison contained")
        after = queue_job(T + "Limited", {"file": str(runs)})
        assert Job(after).wait(timeout=20) == "ok"
    finally:
        _stop(survivor)


@pytest.mark.parametrize("greenlets", [2, 4])
def test_innocent_jobs_running_beside_a_poison_job_are_not_contained(mrq_worker, tmp_path, greenlets):
    """A poison job runs beside innocent ones (--greenlets 2 and 4). A death is counted only against a job that
    ran alone: the jobs of a worker that died with several in flight become suspects and each runs alone next
    time. The poison dies alone 3 times and ends as maxworkerdeaths; every innocent job succeeds, no death counted
    against it (they all used to be counted, and ended as maxworkerdeaths with the poison)."""
    runs = tmp_path / "runs"
    poison = queue_job(T + "Crash", {"file": str(runs)})
    innocents = queue_jobs(T + "Sleep", [{"t": 0.5, "result": i} for i in range(3 * greenlets)])
    mrq_worker.start("--processes", "2", "--greenlets", str(greenlets), "--plugins", "cleaning",
                     env=CLEANING_FAST, wait=False)
    try:
        wait_until(lambda: Job(poison).fetch().status == st.MAXWORKERDEATHS, timeout=120, what="the poison contained")
        wait_until(lambda: all(Job(i).fetch().status == st.SUCCESS for i in innocents), timeout=60,
                   what="every innocent job done")
    finally:
        _stop(mrq_worker)
    assert Job(poison).fetch().data["worker_deaths"] == 3
    assert _runs(runs) == 3 + sum(1 for h in Job(poison).fetch().data["traceback_history"]
                                  if "not counted" in h["traceback"])
    for i in innocents:
        data = Job(i).fetch().data
        assert not data.get("worker_deaths") and not data.get("suspect"), data


def _dead_worker_with(job_ids, worker):
    from mrq.context import get_broker

    get_broker().dequeue(worker, ["default"], len(job_ids))
    return get_broker().inflight(worker)


def test_the_jobs_of_a_dead_worker_are_suspects_before_redis_gives_them_back(mrq_config, monkeypatch):
    """A worker may pop the requeued jobs the instant Redis has them back: their documents must already say
    suspect (or the worker runs them together again, and the poison kills it beside the others: seen under load,
    6 runs for 3 counted deaths) and record the death."""
    from bson import ObjectId

    from mrq.broker import Broker
    from mrq.recovery import requeue_dead_worker_jobs

    ids = [queue_job(T + "Add", {"a": i, "b": 0}) for i in range(2)]
    worker = str(ObjectId())
    records = _dead_worker_with(ids, worker)
    seen = {}
    requeue = Broker.requeue_inflight

    def spy(self, *args, **kwargs):
        seen.update({i: Job(i).fetch().data for i in ids})
        return requeue(self, *args, **kwargs)

    monkeypatch.setattr(Broker, "requeue_inflight", spy)
    assert sorted(requeue_dead_worker_jobs(records, worker)["requeued"]) == sorted(map(str, ids))
    for data in seen.values():
        assert data["suspect"] is True and "not counted" in data["traceback_history"][-1]["traceback"]


def test_a_death_recorded_by_an_interrupted_recovery_is_not_counted_twice(mrq_config, monkeypatch):
    from bson import ObjectId

    from mrq.broker import Broker
    from mrq.recovery import requeue_dead_worker_jobs

    job_id = queue_job(T + "Add", {"a": 1, "b": 0})
    worker = str(ObjectId())
    records = _dead_worker_with([job_id], worker)
    requeue = Broker.requeue_inflight

    def crash(self, *args, **kwargs):
        raise ConnectionError("the cleaner lost Redis between its two writes")

    monkeypatch.setattr(Broker, "requeue_inflight", crash)
    with pytest.raises(ConnectionError):
        requeue_dead_worker_jobs(records, worker, max_deaths=2)
    monkeypatch.setattr(Broker, "requeue_inflight", requeue)
    assert requeue_dead_worker_jobs(records, worker, max_deaths=2)["requeued"] == [str(job_id)]
    data = Job(job_id).fetch().data
    assert data["worker_deaths"] == 1 and len(data["traceback_history"]) == 1 and data["status"] == st.QUEUED
