"""Raw queues: payloads in Redis, documents in MongoDB only for the statuses a queue stores."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from mrq.context import connections, get_broker, setup_context
from mrq.exceptions import ConfigError, InvalidParams
from mrq.job import Job, queue_job
from mrq.queue import Queue
from mrq.raw import check_raw_queues, queue_raw_jobs, remove_raw_jobs
from mrq.recovery import requeue_inflight
from mrq.testing import wait_until

CONFIG = str(Path(__file__).parent / "configs" / "raw.py")
T = "tests.tasks.general."


def payload(**params) -> str:
    return json.dumps(params, sort_keys=True)


@pytest.fixture
def raw(mrq_urls, mrq_worker):
    """The raw queues of tests/configs/raw.py in this process, and a worker to start with that config."""
    setup_context(redis=mrq_urls.redis, mongodb_jobs=mrq_urls.mongodb, config=CONFIG)
    try:
        yield mrq_worker
    finally:
        connections.reset()


def start(worker, *queues: str, greenlets: int = 5):
    return worker.start("--config", CONFIG, "--greenlets", str(greenlets), queues=queues)


def jobs_collection():
    return connections.mongodb_jobs["mrq_jobs"]


# -- enqueue -----------------------------------------------------------------------------------------------

def test_each_kind_of_raw_queue_and_its_counts(raw):
    assert queue_raw_jobs("fast_raw", ["a", "b", "a"]) == 3
    assert queue_raw_jobs("uniq_set", ["a", "b", "a"]) == 3
    queue_raw_jobs("prio_sorted_set", {"low": 10, "high": 1})
    now = time.time()
    queue_raw_jobs("later_timed_set", {"due": now - 1, "future": now + 3600})
    queue_raw_jobs("later_timed_set", ["now"])
    assert Queue("fast_raw").size() == 3                      # a list keeps duplicates
    assert Queue("uniq_set").size() == 2                      # a set does not
    assert Queue("prio_sorted_set").size() == 2
    assert (Queue("later_timed_set").size(), Queue("later_timed_set").delayed_size()) == (2, 1)  # due / not yet
    assert set(get_broker().known_queues()) == {"fast_raw", "uniq_set", "prio_sorted_set", "later_timed_set"}
    assert remove_raw_jobs("fast_raw", ["a"]) == 1 and Queue("fast_raw").size() == 2
    assert remove_raw_jobs("later_timed_set", ["future"]) == 1
    assert jobs_collection().count_documents({}) == 0          # nothing in MongoDB


@pytest.mark.parametrize("queue, params, message", [
    ("default", ["x"], "is not a raw queue"),
    ("fast_raw", {"x": 1}, "takes a list of payloads"),
    ("prio_sorted_set", ["x"], "give a dict of payload -> score"),
    ("fast_raw", [{"a": 1}], "serialise it yourself"),
    ("fast_raw", "abc", "takes a list of payloads"),
    ("later_timed_set", {"x": "soon"}, "is not a number"),
])
def test_bad_raw_enqueues_name_the_problem(raw, queue, params, message):
    with pytest.raises(InvalidParams, match=message):
        queue_raw_jobs(queue, params)
    assert get_broker().known_queues() == []


@pytest.mark.parametrize("entry, message", [
    ({"x_raw": {}}, "needs a job_factory"),
    ({"x_raw": {"job_factory": len, "oops": 1}}, "unknown key"),
    ({"regular": {"job_factory": len}}, "ends in _raw, _set"),
    ({"x_raw": {"job_factory": len, "statuses_no_storage": "success"}}, "must be a tuple"),
    ({"x_raw": {"job_factory": len, "statuses_no_storage": ("retry",)}}, "a retry is always stored"),
    ({"x_raw": {"job_factory": len, "retry_queue": "y_raw"}}, "must name a regular queue"),
    ({"x_raw": {"job_factory": len, "pushback_seconds": 5}}, "timed_set queues only"),
])
def test_bad_raw_queue_config_names_the_entry(entry, message):
    with pytest.raises(ConfigError, match=message):
        check_raw_queues(entry)


def test_a_worker_on_a_raw_queue_without_config_exits_2(mrq_worker):
    mrq_worker.start(queues=("nowhere_raw",), wait=False)
    assert mrq_worker.proc.wait(30) == 2


# -- running -----------------------------------------------------------------------------------------------

def test_the_fast_path_touches_no_mongodb(raw):
    """statuses_no_storage = (started, success): a raw job that succeeds costs no MongoDB operation."""
    worker = start(raw, "fast_raw", greenlets=20)
    queue_raw_jobs("fast_raw", [payload(task="noop", i=i) for i in range(300)])
    worker.wait_for_idle()
    assert worker.stop() == 0
    counters = worker.report()["counters"]
    assert counters["success"] == 300 and counters["statuses_written"] == 0
    assert jobs_collection().count_documents({}) == 0
    assert connections.mongodb_jobs["mrq_logs"].count_documents({}) == 0


def test_a_failure_is_stored_with_its_params_and_a_retry_becomes_a_regular_job(raw):
    worker = start(raw, "fast_raw", "retries")
    queue_raw_jobs("fast_raw", [payload(task="Fail", message="kaput"),
                                payload(task="Retry", succeed_after=1, delay=0),
                                payload(task="noop")])
    worker.wait_for_idle()
    failed = jobs_collection().find_one({"status": "failed"})
    assert failed["params"] == {"message": "kaput"} and "kaput" in failed["traceback"]
    assert failed["raw_queue"] == "fast_raw" and failed["raw_payload"] == payload(task="Fail", message="kaput")
    assert failed["queue"] == "retries" and failed["path"] == T + "Fail"
    retried = jobs_collection().find_one({"path": T + "Retry"})
    assert (retried["status"], retried["retry_count"], retried["result"]) == ("success", 1, 1)
    assert jobs_collection().count_documents({}) == 2  # the noop success stored nothing


def test_a_queue_that_stores_everything(raw):
    worker = start(raw, "kept_raw")
    queue_raw_jobs("kept_raw", [payload(task="add", a=1, b=2)])
    worker.wait_for_idle()
    doc = jobs_collection().find_one()
    assert (doc["status"], doc["result"], doc["worker"]) == ("success", 3, worker.report()["_id"])
    assert doc["datestarted"] <= doc["dateupdated"]


def test_a_job_factory_that_fails_fails_the_job(raw):
    worker = start(raw, "broken_raw")
    queue_raw_jobs("broken_raw", ["x"])
    worker.wait_for_idle()
    doc = jobs_collection().find_one()
    assert doc["status"] == "failed" and doc["exceptiontype"] == "KeyError" and doc["params"] == {"payload": "x"}


def test_sets_sorted_sets_and_timed_sets(raw, tmp_path):
    runs = tmp_path / "runs"
    record = lambda name: payload(task="Record", file=str(runs), result=name)  # noqa: E731
    queue_raw_jobs("prio_sorted_set", {record("third"): 30, record("first"): 10, record("second"): 20})
    queue_raw_jobs("uniq_set", [record("dup"), record("dup")])
    due = time.time() + 3
    queue_raw_jobs("later_timed_set", {record("later"): due})
    assert get_broker().sizes(["later_timed_set"])["later_timed_set"] == (0, 1)  # not due yet
    worker = start(raw, "prio_sorted_set", "uniq_set", "later_timed_set", greenlets=1)
    wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 4, timeout=20, what="four runs")
    wait_until(lambda: len(runs.read_text().splitlines()) == 5, timeout=10, what="the timed job when due")
    assert time.time() >= due  # not before
    assert worker.stop() == 0
    # One greenlet: the sorted set ran lowest score first, then the set (its two equal payloads were one).
    counters = worker.report()["counters"]
    assert counters["success"] == 5


def test_priority_order_across_regular_and_raw_queues(raw, tmp_path):
    regular = queue_job(T + "Sleep", {"t": 0, "result": "regular"}, queue="low")
    queue_raw_jobs("kept_raw", [payload(task="Sleep", t=0, result="raw")])
    worker = start(raw, "kept_raw", "low", greenlets=1)
    worker.wait_for_idle()
    raw_doc = jobs_collection().find_one({"raw_queue": "kept_raw"})
    assert raw_doc["datestarted"] <= Job(regular).fetch().data["datestarted"]


def test_pushback_runs_a_timed_job_again_until_the_task_removes_it(raw, tmp_path):
    runs = tmp_path / "runs"
    queue_raw_jobs("again_timed_set", [payload(task="Record", file=str(runs))])
    worker = start(raw, "again_timed_set")
    wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 2, timeout=10, what="a second run")
    assert remove_raw_jobs("again_timed_set", [payload(task="Record", file=str(runs))]) == 1
    time.sleep(1.5)
    count = len(runs.read_text().splitlines())
    time.sleep(1.5)
    assert len(runs.read_text().splitlines()) == count
    assert worker.stop() == 0


# -- faults ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("queue", ["quiet_raw", "fast_raw", "kept_raw"])
def test_sigterm_puts_a_running_raw_job_back(raw, queue):
    """Interrupted: back into its raw queue when it stores nothing ('interrupt' in statuses_no_storage); when it
    stores a status, it is a regular job from then on, requeued on its retry_queue."""
    worker = start(raw, queue)
    queue_raw_jobs(queue, [payload(task="Sleep", t=30)])
    wait_until(lambda: get_broker().inflight(), what="job running")
    time.sleep(0.3)
    assert worker.stop(signal.SIGTERM) == 0
    assert get_broker().inflight() == []
    if queue == "quiet_raw":
        assert Queue(queue).size() == 1 and jobs_collection().count_documents({}) == 0
    else:
        assert Queue(queue).size() == 0 and Queue("retries").size() == 1
        assert jobs_collection().find_one()["status"] == "interrupt"


def test_sigkill_keeps_the_payload_in_flight_and_requeue_puts_it_back(raw, tmp_path):
    runs = tmp_path / "runs"
    worker = start(raw, "fast_raw")
    queue_raw_jobs("fast_raw", [payload(task="Record", file=str(runs), t=30)])
    wait_until(lambda: runs.exists(), what="job started")
    worker.kill()
    (record,) = get_broker().inflight()
    assert record.payload == payload(task="Record", file=str(runs), t=30) and record.queue == "fast_raw"
    assert requeue_inflight([record], record.worker_id) == [record.job_id]
    assert Queue("fast_raw").size() == 1
    start(raw, "fast_raw")
    wait_until(lambda: len(runs.read_text().splitlines()) == 2, what="run again")


def test_cancel_a_running_raw_job_that_stored_nothing(raw, tmp_path):
    worker = start(raw, "fast_raw")
    queue_raw_jobs("fast_raw", [payload(task="Sleep", t=30)])
    (record,) = wait_until(lambda: get_broker().inflight(), what="job running")
    assert Job(record.job_id).cancel() is True
    wait_until(lambda: not get_broker().inflight(), timeout=5, what="job stopped")
    doc = jobs_collection().find_one({"_id": Job(record.job_id).id})
    assert doc["status"] == "cancel" and doc["raw_queue"] == "fast_raw"  # 'cancel' is not in no_storage
    assert worker.stop() == 0


# -- max_concurrency on raw queues ---------------------------------------------------------------------------

def _runs(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("queue", ["limited_raw", "limited_set", "limited_sorted_set", "limited_timed_set"])
def test_a_raw_job_waiting_for_a_slot_waits_without_spinning(raw, tmp_path, queue):
    """A raw job whose task (limited to 1 at a time) has no free slot waits, parked, until the slot frees: one
    deferral, not hundreds of pops a second; then it runs. Both jobs run once, one after the other."""
    runs = tmp_path / "runs"
    items = [payload(task="Limited", file=str(runs), t=3, n=i) for i in range(2)]
    worker = start(raw, queue)
    queue_raw_jobs(queue, {p: i for i, p in enumerate(items)} if "sorted" in queue or "timed" in queue else items)
    wait_until(lambda: len(_runs(runs)) == 2, timeout=30, what="both jobs run")
    worker.wait_for_idle()
    times = sorted(float(line.split()[2]) for line in _runs(runs))
    assert times[1] - times[0] >= 2.9  # never both at once
    assert worker.stop() == 0
    counters = worker.report()["counters"]
    assert 1 <= counters["deferred"] <= 3, counters  # spinning made it hundreds
    assert counters.get("success") == 2


def test_a_sigkilled_raw_job_frees_its_slot(raw, tmp_path):
    """A raw job of a SIGKILLed worker comes back under a new id: the slot its old id held is freed by the recovery
    (it used to be held for the job's timeout + 30 s, an hour by default), so it runs again at once."""
    from mrq.recovery import requeue_dead_worker_jobs

    runs = tmp_path / "runs"
    worker = start(raw, "limited_raw")
    queue_raw_jobs("limited_raw", [payload(task="Limited", file=str(runs), t=60)])
    wait_until(lambda: runs.exists(), what="job started")
    worker.kill()
    (record,) = get_broker().inflight()
    assert requeue_dead_worker_jobs([record], record.worker_id)["requeued"] == [record.job_id]
    start(raw, "limited_raw")
    wait_until(lambda: len(_runs(runs)) == 2, timeout=20, what="run again under a new id")
    first, second = (line.split()[0] for line in _runs(runs))
    assert first != second
