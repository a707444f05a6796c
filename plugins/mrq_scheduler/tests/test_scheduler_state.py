"""The scheduler's state in MongoDB and its lock in Redis, driven with a controlled clock (real servers).

Each ``Scheduler`` instance stands for one worker process: it has its own in-memory state and shares
only Redis and MongoDB with the others, as separate processes do.
"""

from __future__ import annotations

import datetime as dt
import logging

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
    # In the order queued: a period's job id is derived from the period, not from the time.
    return list(connections.mongodb_jobs["mrq_jobs"].find({"path": T, **query}, sort=[("datequeued", 1)]))


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
    assert jobs() == [] and len(state()) == 1  # declared (safe without the lock), nothing queued
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


def test_changed_config_adds_the_changed_entries_and_keeps_the_others():
    keep = {"path": T, "params": {"a": 5, "b": 5}, "interval": 60}
    change = {"path": T, "params": {"a": 6, "b": 6}, "interval": 60}
    old = make([keep, change])
    assert len(old.check(s(0))) == 2
    before = state()
    new = make([keep, {**change, "interval": 120}, {"path": T, "cron": "0 12 * * *", "params": {"a": 7, "b": 7}}])
    assert len(new.check(s(30))) == 1   # the changed one is a new entry: runs at once; the kept one is not due
    after = state()
    kept = parse_entries([keep])[0].hash
    assert {**after[kept], "seen": None} == {**before[kept], "seen": None}  # same _id, same state
    assert after[kept]["seen"] == s(30).replace(tzinfo=None)                 # declared by the new process
    assert len(after) == 4  # the old definition stays: a live process declares it
    assert {d["description"] for d in after.values()} == {"every 60 s", "every 120 s", "cron 0 12 * * * (UTC)"}
    # the old process keeps running its own entries, the old definition included
    assert len(old.check(s(60))) == 2
    assert len(new.check(s(61))) == 0


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


# ---------------------------------------------------------------------- mixed configs (rolling deploys)
X = {"path": T, "params": {"a": 10, "b": 0}, "interval": 10}   # in both configs
Y = {"path": T, "params": {"a": 11, "b": 0}, "interval": 10}   # removed by the new config
Z = {"path": T, "params": {"a": 12, "b": 0}, "interval": 10}   # added by the new config


def runs(raw) -> list[dt.datetime]:
    """When the jobs of one entry were queued (simulated time), from its params."""
    found = connections.mongodb_jobs["mrq_jobs"].find({"path": T, "params": raw["params"]}, sort=[("datequeued", 1)])
    return [d["_id"] for d in found]


def simulate(schedule, seconds: range) -> dict:
    """Each second, every process alive then checks: ``schedule(second)`` gives them (they stand for processes).

    Returns {job id: second queued}."""
    queued = {}
    for second in seconds:
        for offset, process in enumerate(schedule(second)):
            for job_id in process.check(s(second + 0.01 * offset)) or []:
                queued[job_id] = second
    return queued


def seconds_of(queued: dict, raw) -> list[int]:
    return [queued[i] for i in runs(raw) if i in queued]


def test_rollout_forward_old_processes_keep_their_entries():
    """Old config first, new config joins at 25 s: the old processes still run the entry the new config removed."""
    old, new = make([X, Y]), make([X, Z])
    simulate(lambda t: [old] + ([new] if t >= 25 else []), range(60))
    assert len(runs(X)) == 6          # 0, 10, ... 50: once per period across both configs
    assert len(runs(Y)) == 6          # the old process still declares it: it keeps running
    assert len(runs(Z)) == 4          # 25, 35, 45, 55: from its first declaration on
    assert sum(old.queued.values()) + sum(new.queued.values()) == 16


def test_rollout_backward_old_process_restarting_keeps_new_entries():
    """New config first; an old-config process (re)starts at 25 s and again at 45 s (a --max_jobs respawn):
    the new entries keep running at their interval (issue 7: they never ran again)."""
    new = make([X, Z])
    olds = {25: make([X, Y]), 45: make([X, Y])}

    def alive(t):
        started = [o for start, o in olds.items() if start <= t]
        return [new] + started[-1:]  # the second old process replaces the first one

    simulate(alive, range(60))
    assert len(runs(X)) == 6
    assert len(runs(Z)) == 6          # 0, 10, ... 50
    assert len(runs(Y)) == 4          # 25, 35, 45, 55: the restart neither re-runs nor skips its period


def test_removed_entry_stops_with_its_last_process_and_is_deleted_after_the_orphan_ttl():
    ttl = 600
    y = parse_entries([Y])[0].hash
    # a document written by mrq-scheduler 1.0 (no "seen"), of an entry no config has any more
    connections.mongodb_jobs[COLLECTION].insert_one({"hash": "legacy", "path": T, "next_run": s(0)})
    old, new = make([X, Y], orphan_ttl=ttl), make([X, Z], orphan_ttl=ttl)
    simulate(lambda t: [old, new], range(30))
    # the last old process stops at 30 s: Y runs no more, its state is kept
    simulate(lambda t: [new], range(30, 300))
    assert len(runs(Y)) == 3
    assert state()[y]["next_run"] == s(30).replace(tzinfo=None)
    # a rollback within the TTL: Y resumes where it was (the missed periods coalesced into one run)
    back = make([X, Y], orphan_ttl=ttl)
    simulate(lambda t: [new, back], range(300, 321))
    assert len(runs(Y)) == 6          # 300, 310, 320
    # no process declares Y any more: it is deleted once not declared for the TTL, not before
    simulate(lambda t: [new], range(321, 911, 5))
    assert y in state() and "legacy" not in state()  # the legacy document's TTL started at the first check
    new.check(s(915))
    assert y in state()
    new.check(s(935))
    assert set(state()) == {e.hash for e in parse_entries([X, Z])}
    assert len(runs(X)) == len(runs(Z)) == 93  # every 10 s from 0 to 910, then 920+930 coalesced: never deleted


def test_entry_deleted_by_another_process_is_declared_again():
    """mrq-scheduler 1.0 deleted the entries its config did not list: a live process inserts its own again."""
    sched = make([X])
    assert len(sched.check(s(0))) == 1
    connections.mongodb_jobs[COLLECTION].delete_many({})
    assert sched.check(s(1)) == []       # finds its entry gone...
    assert len(sched.check(s(2))) == 1   # ...declares it again: a new entry, which runs at once
    assert len(state()) == 1


def test_orphan_ttl_shorter_than_six_declaration_periods_is_refused():
    with pytest.raises(ValueError, match=r"orphan_ttl=59 s is shorter than 60 s \(6 declaration periods of 10 s\)"):
        make([X], orphan_ttl=59)
    with pytest.raises(ValueError, match="shorter than 120 s"):
        make([X], interval=20, orphan_ttl=100)
    assert make([X], orphan_ttl=60).orphan_ttl == 60


OLD_POLL = {"name": "poll", "path": T, "params": {"a": 20, "b": 0}, "interval": 10}
NEW_POLL = {"name": "poll", "path": T, "params": {"a": 21, "b": 0}, "interval": 20}


def test_named_entry_the_newest_definition_wins_in_both_rollout_directions(caplog):
    caplog.set_level(logging.INFO, logger="mrq.scheduler")
    old_hash, new_hash = parse_entries([OLD_POLL])[0].hash, parse_entries([NEW_POLL])[0].hash
    old = make([OLD_POLL])
    queued = simulate(lambda t: [old], range(25))
    # forward: the new definition is first declared at 25 s; from then on it alone runs, keeping the entry's
    # rhythm (last run 20 s + its 20 s interval), and the old process passes its own periods
    new = make([NEW_POLL])
    queued |= simulate(lambda t: [old, new], range(25, 65))
    # backward: an old process (re)starting does not bring the old definition back
    old = make([OLD_POLL])
    queued |= simulate(lambda t: [new, old], range(65, 100))
    assert seconds_of(queued, OLD_POLL) == [0, 10, 20]
    assert seconds_of(queued, NEW_POLL) == [40, 60, 80]
    assert old.report()["tasks"][0]["superseded_by"] == new_hash
    assert old.report()["periods_superseded"] == 3  # 70, 80, 90
    # rollback complete: the new processes stop at 100 s (last declared 95 s); 3 declaration periods later the
    # old definition takes over, at its next regular time (no catch-up of the periods the new one had)
    queued |= simulate(lambda t: [old], range(100, 160))
    assert seconds_of(queued, OLD_POLL) == [0, 10, 20, 130, 140, 150]
    assert old.report()["tasks"][0]["superseded_by"] is None
    docs = state()
    assert docs[old_hash]["queued_count"] == 6 and docs[new_hash]["queued_count"] == 3
    # one warning per old process when superseded, one note when it takes over again
    messages = [r.getMessage() for r in caplog.records if r.name == "mrq.scheduler"]
    assert len([m for m in messages if "'poll' (" in m and "is not queued by this worker" in m]) == 2
    assert len([m for m in messages if "is queued by this worker again" in m]) == 1


def test_new_definition_of_a_named_interval_entry_runs_at_once_if_its_rhythm_is_past():
    old = make([OLD_POLL])                                   # every 10 s: runs at 0
    queued = simulate(lambda t: [old], range(8))
    new = make([{**NEW_POLL, "interval": 5}])                # first declared at 8 s: 0 + 5 is past
    queued |= simulate(lambda t: [old, new], range(8, 20))
    assert seconds_of(queued, OLD_POLL) == [0]
    assert seconds_of(queued, {**NEW_POLL, "interval": 5}) == [8, 13, 18]


def test_named_definitions_first_declared_at_the_same_time_the_highest_hash_wins():
    low, high = sorted((OLD_POLL, NEW_POLL), key=lambda raw: parse_entries([raw])[0].hash)
    a, b = make([low]), make([high])
    a.declare(s(0))  # the lower hash is stored first
    b.declare(s(0))
    queued = simulate(lambda t: [a, b], range(1, 31))
    every = high["interval"]
    assert seconds_of(queued, high) == [1, *range(every, 31, every)]  # first slot at 0, checked at 1
    assert seconds_of(queued, low) == []


def test_a_crash_between_queueing_and_claiming_makes_no_second_job(monkeypatch):
    """A process killed after queueing a period's job but before claiming the period: the next process queues the
    same job id again (nothing is created) and claims the period. One job per period, whatever crashes."""
    tasks = [{"path": T, "params": {"a": 1, "b": 3}, "interval": 10}]
    a, b = make(tasks), make(tasks)
    assert len(a.check(s(0))) == 1
    (doc,) = a.due(s(10))

    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed  # the process dies right after queue_job, before the claim

    monkeypatch.setattr(a.collection, "update_one", die)
    with pytest.raises(Killed):
        a.fire(doc, s(10))
    monkeypatch.undo()
    assert len(jobs()) == 2                     # the job of the period is queued, the period is not claimed
    assert len(b.check(s(10.5))) == 1           # the next process "queues" it again and claims the period
    assert len(jobs()) == 2                     # ...without a second job
    assert next(iter(state().values()))["last_job"] == jobs()[-1]["_id"]
