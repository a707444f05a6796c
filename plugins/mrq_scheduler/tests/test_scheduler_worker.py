"""The scheduler in real ``mrq-worker --plugins scheduler`` processes."""

from __future__ import annotations

import datetime as dt
import signal
import time

from mrq.context import connections

T = "tests.tasks.general.add"


def write_config(tmp_path, tasks: str) -> str:
    path = tmp_path / "mrq-config.py"
    path.write_text("SCHEDULER_TASKS = " + tasks + "\n")
    return str(path)


def jobs(**query):
    return list(connections.mongodb_jobs["mrq_jobs"].find({"path": T, **query}, sort=[("datequeued", 1)]))


def wait_until(predicate, timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def test_three_workers_queue_an_interval_once_per_period(tmp_path, mrq_worker_factory):
    config = write_config(tmp_path, f'[{{"path": "{T}", "params": {{"a": 1, "b": 1}}, "interval": 2}}]')
    workers = [mrq_worker_factory().start("--plugins", "scheduler", "--config", config, wait=False)
               for _ in range(3)]
    for w in workers:
        w.wait_for_report()
    # the window starts at the first run, whenever the slowest start let it happen
    assert wait_until(lambda: len(jobs()) >= 1, 15)
    first = jobs()[0]["datequeued"]
    utcnow = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    time.sleep(max(0.0, 7.5 - (utcnow - first).total_seconds()))
    in_window = [j for j in jobs() if j["datequeued"] <= first + dt.timedelta(seconds=7)]
    reports = [w.report() for w in workers]
    for w in workers:
        w.proc.send_signal(signal.SIGINT)  # all at once; then wait for each
    assert [w.proc.wait(30) for w in workers] == [0, 0, 0]

    assert 3 <= len(in_window) <= 4, [j["datequeued"] for j in in_window]
    times = [j["datequeued"] for j in jobs()]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert all(gap > 1.5 for gap in gaps), gaps          # never two in one period
    assert {j["status"] for j in jobs()} == {"success"}  # the workers ran them too
    docs = list(connections.mongodb_jobs["mrq_scheduled_jobs"].find())
    assert len(docs) == 1 and docs[0]["queued_count"] == len(jobs())
    assert all(r["scheduler"]["entries"] == 1 for r in reports)
    final = [w.report()["scheduler"] for w in workers]
    assert sum(r["queued"] for r in final) == len(jobs())
    assert all(r["tasks"][0]["schedule"] == "every 2 s" and r["last_check"] for r in final)


def test_restarts_neither_rerun_nor_skip_a_daily_period(tmp_path, mrq_worker):
    # the plugin's clock starts at MRQ_SCHEDULER_NOW in each worker process and then runs normally
    config = write_config(tmp_path, f'''[
        {{"path": "{T}", "params": {{"a": 1, "b": 2}}, "dailytime": "09:00"}},
        {{"path": "{T}", "params": {{"a": 3, "b": 4}}, "cron": "0 9 * * *"}},
    ]''')
    args = ("--plugins", "scheduler", "--config", config, "--scheduler_interval", "0.5")

    mrq_worker.start(*args, env={"MRQ_SCHEDULER_NOW": "2024-01-01T08:59:58Z"})
    assert wait_until(lambda: len(jobs()) == 2, 15), jobs()
    assert mrq_worker.stop() == 0

    # restarted "on the same day": 09:00 passes again in this process, but that period is done
    mrq_worker.start(*args, env={"MRQ_SCHEDULER_NOW": "2024-01-01T08:59:58Z"})
    time.sleep(3.5)
    assert len(jobs()) == 2
    assert mrq_worker.stop() == 0

    # restarted the next day after 09:00 (down at 09:00): that period runs now, once
    mrq_worker.start(*args, env={"MRQ_SCHEDULER_NOW": "2024-01-02T09:00:30Z"})
    assert wait_until(lambda: len(jobs()) == 4, 15), jobs()
    time.sleep(1.5)
    assert mrq_worker.stop() == 0
    assert len(jobs()) == 4
    docs = list(connections.mongodb_jobs["mrq_scheduled_jobs"].find())
    assert {d["last_run"] for d in docs} == {dt.datetime(2024, 1, 2, 9)}
    assert {d["next_run"] for d in docs} == {dt.datetime(2024, 1, 3, 9)}
    assert sorted(j["result"] for j in jobs()) == [3, 3, 7, 7]


# ---------------------------------------------------------------------- rolling deploys (mixed configs)
X = {"path": T, "params": {"a": 10, "b": 0}, "interval": 1}   # in both configs
Y = {"path": T, "params": {"a": 11, "b": 0}, "interval": 1}   # removed by the new config
Z = {"path": T, "params": {"a": 12, "b": 0}, "interval": 1}   # added by the new config


def worker_args(tmp_path, name: str, entries: list[dict]) -> tuple[str, ...]:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return ("--plugins", "scheduler", "--config", write_config(folder, repr(entries)), "--scheduler_interval", "0.2")


def runs(entry: dict) -> list[dt.datetime]:
    return [j["datequeued"] for j in jobs(params=entry["params"])]


def assert_once_per_period(entry: dict) -> None:
    """At most one job per period: every job is a claim that moved next_run along the entry's grid (first period =
    its first declaration), so there are no more jobs than grid slots up to the last period claimed. (Gaps between
    jobs tell nothing: after a restart, the coalesced catch-up run may come just before the next regular one.)"""
    doc = connections.mongodb_jobs["mrq_scheduled_jobs"].find_one({"params": entry["params"]})
    slots = round((doc["last_run"] - doc["datecreated"]).total_seconds() / entry["interval"]) + 1
    assert len(runs(entry)) == doc["queued_count"] <= slots, (entry["params"], doc)


def test_rollout_forward_old_workers_keep_running_removed_entries(tmp_path, mrq_worker_factory):
    old = mrq_worker_factory().start(*worker_args(tmp_path, "old", [X, Y]))
    assert wait_until(lambda: len(runs(Y)) >= 2, 20)
    new = mrq_worker_factory().start(*worker_args(tmp_path, "new", [X, Z]))
    y_before = len(runs(Y))
    # both configs live: the entries of each keep running (today: Y, unknown to the new worker, was deleted)
    assert wait_until(lambda: len(runs(Z)) >= 3 and len(runs(Y)) >= y_before + 3, 20), (runs(Y), runs(Z))
    assert old.stop() == 0
    # Y is now in no live worker's config: it stops at once; Z and X go on
    y_final, z_now = len(runs(Y)), len(runs(Z))
    assert wait_until(lambda: len(runs(Z)) >= z_now + 3, 20)
    assert len(runs(Y)) == y_final
    assert new.stop() == 0
    for entry in (X, Y, Z):
        assert_once_per_period(entry)
    # Y's state is kept (an old worker coming back within --scheduler_orphan_ttl resumes it)
    assert connections.mongodb_jobs["mrq_scheduled_jobs"].count_documents({}) == 3


def test_rollout_backward_old_workers_restarting_keep_new_entries(tmp_path, mrq_worker_factory):
    new = mrq_worker_factory().start(*worker_args(tmp_path, "new", [X, Z]))
    assert wait_until(lambda: len(runs(Z)) >= 2, 20)
    old = mrq_worker_factory()
    for _ in range(3):
        # an old-config worker (re)starts after the new one: a rolling deploy backward, or the respawn of a
        # --max_jobs child (as --processes does); today its start deleted Z, which never ran again
        old.start(*worker_args(tmp_path, "old", [X, Y]), "--max_jobs", "3")
        z_now = len(runs(Z))
        assert wait_until(lambda: len(runs(Z)) >= z_now + 2, 20), runs(Z)  # noqa: B023 - called at once
        assert wait_until(lambda: old.proc.poll() is not None, 30)         # noqa: B023 - exits on --max_jobs
        assert old.proc.returncode == 0
    assert len(runs(Y)) >= 2
    assert new.stop() == 0
    for entry in (X, Y, Z):
        assert_once_per_period(entry)
