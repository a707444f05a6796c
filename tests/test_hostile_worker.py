"""Hostile jobs in a real worker, property-based: no worker crash, no job lost, no other job affected.

One worker process serves a whole hypothesis run. Each example enqueues a hostile-but-accepted job (params, a
result or an exception message of any shape and size, a task path that does not import, that raises or exits when
imported, a function called with the wrong arguments) next to a known good job: the good job succeeds, the
hostile one ends in a final status (with a readable, bounded traceback when it fails), and the worker lives on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrq import status as st_
from mrq.context import get_broker
from mrq.exceptions import InvalidParams
from mrq.job import Job, queue_job

T = "tests.tasks.general."
FINAL = {st_.SUCCESS, st_.FAILED, st_.ABORT, st_.MAXRETRIES, st_.TIMEOUT, st_.CANCEL, st_.MAXCONCURRENCY}
MAX_TRACEBACK = 70_000  # characters: MRQ keeps 64 KiB of a traceback (its start and its end)

TEXT = st.text(max_size=20) | st.sampled_from(["", "\x00", "\u65e5\u672c", "%s %(x)s {0}", "x" * 100_000])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | TEXT | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)
CASES = st.one_of(
    st.builds(lambda v: (T + "Sleep", {"t": 0, "result": v}), JSONISH),             # any result
    st.builds(lambda m: (T + "Fail", {"message": m}), JSONISH),                     # any exception message
    st.builds(lambda p: (T + "add", p), st.dictionaries(st.text(max_size=4), JSONISH, max_size=3)),  # bad kwargs
    st.builds(lambda p: (T + "Add", p), st.dictionaries(st.sampled_from("ab"), JSONISH, max_size=2)),
    st.builds(lambda path, p: (path, p), st.sampled_from([
        "tests.tasks.exits_on_import.X", "tests.tasks.raises_on_import.X", "tests.tasks.general.Nope",
        "tests.tasks.nope.X", "tests.tasks.general.log", "tests.tasks.general.Add.run", "builtins.exit",
        "tests.tasks.general.UnserialisableResult", "tests.tasks.general.Abort"]), st.just({})),
)


def _final(job_id: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = Job(job_id).fetch().data or {}
        if data.get("status") in FINAL:
            return data
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not in a final status within {timeout} s: {Job(job_id).fetch().data}")


def assert_hostile_and_good(bad: Any, good: Any) -> None:
    assert _final(good).get("result") == 3, "the good job next to a hostile one did not succeed"
    data = _final(bad)
    if data["status"] != st_.SUCCESS:
        assert data.get("exceptiontype") and isinstance(data.get("traceback"), str), data
        assert 0 < len(data["traceback"]) <= MAX_TRACEBACK


def test_hostile_jobs_next_to_good_ones(mrq_config, mrq_worker):
    mrq_worker.start("--greenlets", "3")

    @settings(max_examples=30, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=CASES)
    def run(case: tuple[str, dict[str, Any]]) -> None:
        path, params = case
        try:
            bad = queue_job(path, params)
        except InvalidParams:
            return  # refused at enqueue: test_hostile_jobs covers it
        good = queue_job(T + "Add", {"a": 1, "b": 2})
        assert_hostile_and_good(bad, good)

    run()
    assert mrq_worker.proc.poll() is None, "the worker died"
    mrq_worker.wait_for_idle(timeout=30)
    assert get_broker().redis.hlen(get_broker().inflight_key) == 0


@pytest.mark.parametrize("path, params, exceptiontype, words", [
    # Found: the job's module called sys.exit() when the worker imported it: the worker exited (code 1) and the job
    # stayed in flight, to kill the next worker that took it.
    ("tests.tasks.exits_on_import.X", {}, "TaskNotFound", "raised SystemExit"),
    # Found: a 9 MiB exception message made a 18 MiB document (traceback + its history entry): MongoDB refused the
    # status write, the writer retried the batch forever, and every later job of the worker stayed in flight. Now
    # a traceback keeps its first and last 32 KiB.
    (T + "Fail", {"message": "x" * (9 * 2**20)}, "ValueError", "characters left out"),
    # Found: a 12 MiB result next to its 12 MiB params: the same endless retry. Now the job fails, saying why.
    (T + "Add", {"a": "x" * (6 * 2**20), "b": "y" * (6 * 2**20)}, "InvalidParams", "Store big results elsewhere"),
])
def test_found_by_hypothesis(mrq_config, mrq_worker, path, params, exceptiontype, words):
    mrq_worker.start()
    bad = queue_job(path, params)
    good = queue_job(T + "Add", {"a": 1, "b": 2})
    assert_hostile_and_good(bad, good)
    data = _final(bad)
    assert (data["status"], data["exceptiontype"]) == (st_.FAILED, exceptiontype) and words in data["traceback"]
    later = queue_job(T + "Add", {"a": 1, "b": 2})
    assert _final(later)["result"] == 3
    mrq_worker.wait_for_idle(timeout=30)
    assert get_broker().redis.hlen(get_broker().inflight_key) == 0, "a job stayed in flight"
    assert mrq_worker.proc.poll() is None


def test_a_status_write_mongodb_refuses_blocks_no_other_job(mrq_urls):
    """Found with hypothesis (the 9 MiB exception message above, before tracebacks were bounded): a status write
    MongoDB refuses (the document would pass 16 MiB) was retried forever with its whole batch, so no later job of
    the worker was ever acknowledged. Now the others are stored and acknowledged, and the refused one is stored as
    failed, saying why. A document near 16 MiB here is written directly (by another client, or an older MRQ)."""
    import pymongo
    import redis

    from mrq.broker import Broker
    from mrq.job import Outcome, utcnow
    from mrq.writer import StatusWriter

    client = pymongo.MongoClient(mrq_urls.mongodb)
    db, broker = client.get_default_database(), Broker(redis.Redis.from_url(mrq_urls.redis), "w")
    try:
        now = utcnow()
        big, small = db["mrq_jobs"].insert_many([
            {"status": "queued", "queue": "q", "path": "p.t", "datequeued": now, "params": {"x": "x" * (15 * 2**20)}},
            {"status": "queued", "queue": "q", "path": "p.t", "datequeued": now, "params": {}}]).inserted_ids
        broker.push("q", [str(big), str(small)])
        broker.dequeue("worker", ["q"], 2)
        writer = StatusWriter(db["mrq_jobs"], broker, 0.05)
        writer.finished(big, Outcome(st_.SUCCESS, set={"status": st_.SUCCESS, "result": "r" * (2 * 2**20)}))
        writer.finished(small, Outcome(st_.SUCCESS, set={"status": st_.SUCCESS, "result": 3}))
        assert writer.flush(timeout=10), "the writer kept retrying a write MongoDB refuses"
        docs = {d["_id"]: d for d in db["mrq_jobs"].find({}, {"params": 0})}
        assert docs[small]["status"] == st_.SUCCESS and docs[small]["result"] == 3
        assert docs[big]["status"] == st_.FAILED and docs[big]["exceptiontype"] == "StatusWriteRefused"
        assert "MongoDB refused the write" in docs[big]["traceback"] and "result" not in docs[big]
        assert broker.inflight() == []
    finally:
        client.close()
