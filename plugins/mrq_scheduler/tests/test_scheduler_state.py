"""The scheduler's state in MongoDB and its lock in Redis, driven with a controlled clock (real servers).

Each ``Scheduler`` instance stands for one worker process: it has its own in-memory state and shares
only Redis and MongoDB with the others, as separate processes do.
"""

from __future__ import annotations

import datetime as dt

import pytest
from mrq_scheduler.cron import UTC
from mrq_scheduler.entries import parse_entries
from mrq_scheduler.scheduler import COLLECTION, Scheduler

from mrq.context import connections, get_broker

T = "tests.tasks.general.add"
START = dt.datetime(2024, 1, 1, 8, 0, 0, tzinfo=UTC)  # a Monday


def make(tasks, **kwargs) -> Scheduler:
    return Scheduler(parse_entries(tasks), connections.mongodb_jobs, get_broker(), **kwargs)


def s(seconds: float) -> dt.datetime:
    return START + dt.timedelta(seconds=seconds)


def jobs(**query):
    return list(connections.mongodb_jobs["mrq_jobs"].find({"path": T, **query}, sort=[("_id", 1)]))


def state():
    return {d["hash"]: d for d in connections.mongodb_jobs[COLLECTION].find()}


@pytest.fixture(autouse=True)
def _context(mrq_config):
    yield


def test_interval_exactly_once_per_period_across_processes():
    tasks = [{"path": T, "params": {"a": 1, "b": 1}, "interval": 10}]
    workers = [make(tasks) for _ in range(3)]
    queued = []
    # each "process" checks every second, in turn; 65 s of simulated time
    for second in range(66):
        for w in workers:
            ids = w.check(s(second + 0.01 * workers.index(w)))
            queued += ids or []
    assert len(queued) == 7  # at 0, 10, 20, 30, 40, 50, 60
    assert len(jobs()) == 7
    doc = next(iter(state().values()))
    assert doc["queued_count"] == 7
    assert doc["last_run"] == s(60).replace(tzinfo=None)
    assert doc["next_run"] == s(70).replace(tzinfo=None)
    assert doc["last_job"] == queued[-1]
    assert sum(sum(w.queued.values()) for w in workers) == 7


def test_a_claim_is_a_compare_and_set():
    tasks = [{"path": T, "params": {"a": 1, "b": 2}, "interval": 10}]
    a, b = make(tasks), make(tasks)
    assert len(a.check(s(0))) == 1
    stale = a.due(s(10))          # a reads the due document...
    assert len(stale) == 1
    assert len(b.check(s(10.5))) == 1   # ...b queues that period meanwhile (a's lock expired, say)
    assert a.fire(stale[0], s(10.6)) is None  # a's claim does not match: no second job
    assert a.stats["claims_lost"] == 1
    assert len(jobs()) == 2


def test_lock_held_elsewhere_skips_the_check():
    tasks = [{"path": T, "params": {"a": 0, "b": 0}, "interval": 10}]
    sched = make(tasks)
    broker = get_broker()
    other = broker.redis.lock(broker.key("scheduler", "lock"), timeout=5)
    assert other.acquire(blocking=False)
    assert sched.check(s(0)) is None
    assert sched.stats["lock_busy"] == 1
    assert jobs() == [] and state() == {}  # not even synced
    other.release()
    assert len(sched.check(s(0))) == 1
    assert broker.redis.exists(sched.lock_key) == 0  # released after the check


def test_restart_neither_reruns_nor_skips():
    tasks = [{"path": T, "params": {"a": 2, "b": 2}, "dailytime": "09:00"},
             {"path": T, "params": {"a": 3, "b": 3}, "cron": "*/30 * * * *"}]
    first = make(tasks)
    assert first.check(s(0)) == []                  # 08:00: nothing due yet
    assert len(first.check(s(3600))) == 2           # 09:00: both
    # "restart": a new process at 09:10 with the same config: nothing again
    assert make(tasks).check(s(4200)) == []
    # the next process starts at 10:45, having been down through 09:30 and 10:00 and 10:30:
    # the missed cron periods are coalesced into one run now, the daily one waits for tomorrow
    late = make(tasks)
    assert len(late.check(s(9900))) == 1
    assert late.check(s(9901)) == []
    assert late.next_runs == {e.hash: v.replace(tzinfo=None) for e, v in zip(
        late.entries.values(), [dt.datetime(2024, 1, 2, 9, tzinfo=UTC), s(10800)], strict=True)}
    assert len(jobs()) == 3


def test_new_dailytime_already_passed_today_waits_for_tomorrow():
    tasks = [{"path": T, "params": {"a": 4, "b": 4}, "dailytime": "07:00", "weekday": 0}]
    sched = make(tasks)
    assert sched.check(s(0)) == []                       # Monday 08:00, 07:00 passed: not now
    assert sched.check(s(6 * 86400 + 3600)) == []        # Sunday
    assert len(sched.check(s(7 * 86400 - 3600))) == 1    # next Monday 07:00


def test_changed_config_replaces_only_the_changed_entries():
    keep = {"path": T, "params": {"a": 5, "b": 5}, "interval": 60}
    change = {"path": T, "params": {"a": 6, "b": 6}, "interval": 60}
    old = make([keep, change])
    assert len(old.check(s(0))) == 2
    before = state()
    new = make([keep, {**change, "interval": 120}, {"path": T, "cron": "0 12 * * *", "params": {"a": 7, "b": 7}}])
    assert len(new.check(s(30))) == 1   # the changed one is a new entry: runs at once; the kept one is not due
    after = state()
    kept = parse_entries([keep])[0].hash
    assert after[kept] == before[kept]  # untouched: same _id, same state
    assert parse_entries([change])[0].hash not in after
    assert len(after) == 3
    assert {d["description"] for d in after.values()} == {"every 60 s", "every 120 s", "cron 0 12 * * * (UTC)"}
    # the old process keeps running its own entries only: it does not bring back the removed one
    assert len(old.check(s(60))) == 1
    assert len(state()) == 3


def test_report():
    sched = make([{"path": T, "params": {"a": 8, "b": 8}, "interval": 5}])
    sched.check(s(0))
    report = sched.report()
    assert report["entries"] == 1 and report["queued"] == 1 and report["checks"] == 1
    assert report["last_check"] == s(0).replace(tzinfo=None)
    assert report["tasks"][0]["schedule"] == "every 5 s"
    assert report["tasks"][0]["next_run"] == s(5).replace(tzinfo=None)
    import bson
    bson.encode({"scheduler": report})  # storable in mrq_workers
