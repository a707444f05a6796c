"""End-to-end worker behaviour on real Redis and MongoDB servers."""

from __future__ import annotations

import signal

from mrq.job import Job, queue_job, queue_jobs
from mrq.logger import job_logs
from mrq.testing import wait_for_idle, wait_until

T = "tests.tasks.general."


def test_simple_job_end_to_end(mrq_worker):
    mrq_worker.start("--greenlets", "2")
    job_id = queue_job(T + "Add", {"a": 41, "b": 1})
    mrq_worker.wait_for_idle()
    job = Job(job_id).fetch()
    assert job.data["status"] == "success"
    assert job.data["result"] == 42
    assert job.data["worker"] == mrq_worker.report()["_id"]
    assert job.data["datestarted"] <= job.data["dateupdated"]
    assert mrq_worker.stop() == 0
    assert "adding 41 and 1" in job_logs(job_id)
    report = mrq_worker.report()
    assert report["status"] == "stop"
    assert report["counters"]["success"] == 1
    from mrq.context import get_broker
    worker_id = str(report["_id"])
    assert get_broker().alive([worker_id]) == {worker_id: False}  # a stopped worker is not alive


def test_function_task_and_failure(mrq_worker):
    mrq_worker.start()
    ok = queue_job(T + "add", {"a": 1, "b": 2})
    bad = queue_job(T + "Fail", {"message": "kaput"})
    missing = queue_job("tests.tasks.general.DoesNotExist", {})
    mrq_worker.wait_for_idle()
    assert Job(ok).fetch().data["result"] == 3
    data = Job(bad).fetch().data
    assert data["status"] == "failed"
    assert data["exceptiontype"] == "ValueError"
    assert "kaput" in data["traceback"]
    assert "pluggy" not in data["traceback"]
    frames = [line for line in data["traceback"].splitlines() if line.strip().startswith("File ")]
    assert "tests/tasks/general.py" in frames[0], data["traceback"]  # starts at the task's own frame
    assert len(data["traceback_history"]) == 1
    data = Job(missing).fetch().data
    assert data["status"] == "failed"
    assert data["exceptiontype"] == "TaskNotFound"
    assert "has no 'DoesNotExist'" in data["traceback"]


def test_many_jobs_concurrently(mrq_worker):
    mrq_worker.start("--greenlets", "20")
    ids = queue_jobs(T + "Sleep", [{"t": 0.5, "result": i} for i in range(40)])
    mrq_worker.wait_for_idle()
    results = [Job(i).fetch().data for i in ids]
    assert [r["result"] for r in results] == list(range(40))
    assert {r["status"] for r in results} == {"success"}


def test_sigint_finishes_running_jobs(mrq_worker):
    mrq_worker.start("--greenlets", "2")
    ids = queue_jobs(T + "Sleep", [{"t": 1.5}] * 2 + [{"t": 0.1}] * 3)
    import time
    time.sleep(0.8)
    assert mrq_worker.stop(signal.SIGINT) == 0
    statuses = [Job(i).fetch().data["status"] for i in ids]
    assert statuses[:2] == ["success", "success"]
    assert statuses[2:] == ["queued"] * 3


def test_sigint_stores_the_statuses_and_logs_still_buffered(mrq_worker):
    """Statuses and log lines wait for the next flush (here in 30 s): stopping the worker stores them."""
    from mrq.testing import wait_until
    mrq_worker.start(env={"MRQ_FLUSH_INTERVAL": "30"})
    job_id = queue_job(T + "Add", {"a": 20, "b": 22})
    wait_until(lambda: (mrq_worker.report()["counters"].get("success") or 0) == 1, what="job done")
    assert job_logs(job_id) == ""  # still buffered (and so may be its status)
    assert mrq_worker.stop() == 0
    assert Job(job_id).fetch().data["result"] == 42
    assert "adding 20 and 22" in job_logs(job_id)


def test_sigterm_interrupts_and_requeues(mrq_worker, mrq_config):
    from mrq.context import get_broker
    mrq_worker.start("--greenlets", "2")
    ids = queue_jobs(T + "Sleep", [{"t": 30}] * 2)
    import time
    time.sleep(0.8)
    waiting = queue_job(T + "Add", {"a": 1, "b": 1})  # the pool is full: it waits in the queue
    assert mrq_worker.stop(signal.SIGTERM) == 0
    for i in ids:
        assert Job(i).fetch().data["status"] == "interrupt"
    listed = get_broker().list_ids("default")
    assert sorted(listed[:2]) == sorted(str(i) for i in ids) and listed[2:] == [str(waiting)]  # at the head
    assert get_broker().inflight() == []


def test_retry_with_delay_comes_back_by_itself(mrq_worker):
    mrq_worker.start("--greenlets", "2")
    job_id = queue_job(T + "Retry", {"succeed_after": 2, "delay": 0.3})
    mrq_worker.wait_for_idle()
    data = Job(job_id).fetch().data
    assert data["status"] == "success"
    assert data["result"] == 2
    assert data["retry_count"] == 2
    assert [h["status"] for h in data["traceback_history"]] == ["retry", "retry"]


def test_max_retries_and_retry_on_backoff(mrq_worker):
    mrq_worker.start("--greenlets", "2")
    maxed = queue_job(T + "Retry", {"delay": 0, "max_retries": 1})
    auto = queue_job(T + "RetryOn", {})
    mrq_worker.wait_for_idle()
    data = Job(maxed).fetch().data
    assert data["status"] == "maxretries"
    assert data["retry_count"] == 1
    data = Job(auto).fetch().data
    assert data["status"] == "maxretries"
    assert data["retry_count"] == 2
    assert data["exceptiontype"] == "ConnectionError"
    delays = [(h2["date"] - h1["date"]).total_seconds()
              for h1, h2 in zip(data["traceback_history"], data["traceback_history"][1:], strict=False)]
    assert len(delays) == 2
    assert delays[1] >= 0.1  # second retry waited retry_delay * backoff (with jitter)


def test_retry_on_another_queue(mrq_worker):
    mrq_worker.start(queues=("default", "other"))
    job_id = queue_job(T + "Retry", {"succeed_after": 1, "delay": 0, "queue": "other"})
    mrq_worker.wait_for_idle()
    data = Job(job_id).fetch().data
    assert (data["status"], data["queue"]) == ("success", "other")


def test_delayed_job(mrq_worker):
    import time
    mrq_worker.start()
    start = time.time()
    job_id = queue_job(T + "Add", {"a": 1, "b": 1}, delay=1.0)
    assert Job(job_id).wait(timeout=10) == 2
    data = Job(job_id).fetch().data
    assert (data["datestarted"] - data["datequeued"]).total_seconds() >= 0.9
    assert time.time() - start >= 1.0


def test_timeout_kills_job_and_subpool(mrq_worker, mrq_config):
    from mrq.config import get_config  # noqa: F401
    mrq_worker.start("--greenlets", "3", env={"MRQ_DEFAULT_JOB_TIMEOUT": "0.5"})
    slow = queue_job(T + "Sleep", {"t": 5})
    swallow = queue_job(T + "SleepSwallowingTimeout", {"t": 5})
    sub = queue_job(T + "SubPool", {"values": [1, 2, 3, 4], "t": 5, "pool_size": 2})
    mrq_worker.wait_for_idle(timeout=15)
    for job_id in (slow, swallow, sub):
        data = Job(job_id).fetch().data
        assert data["status"] == "timeout", data
        assert data["totaltime"] < 3
    assert mrq_worker.stop() == 0
    assert mrq_worker.report()["jobs"] == []  # the final report: no job left behind


def test_a_task_that_swallows_its_timeout_and_goes_on_is_still_killed(mrq_worker):
    mrq_worker.start(env={"MRQ_DEFAULT_JOB_TIMEOUT": "0.5"})
    job_id = queue_job(T + "SleepSwallowingTimeout", {"t": 5, "then": 30})
    mrq_worker.wait_for_idle(timeout=4)
    assert Job(job_id).fetch().data["status"] == "timeout"


def test_abort_and_unserialisable_result(mrq_worker):
    mrq_worker.start()
    aborted = queue_job(T + "Abort", {})
    bad = queue_job(T + "UnserialisableResult", {})
    mrq_worker.wait_for_idle()
    assert Job(aborted).fetch().data["status"] == "abort"
    data = Job(bad).fetch().data
    assert data["status"] == "failed"
    assert "cannot be stored in MongoDB" in data["traceback"]


def test_cancel_running_job_stops_it(mrq_worker):
    import time
    mrq_worker.start("--greenlets", "2")
    running = queue_job(T + "Sleep", {"t": 30})
    time.sleep(0.7)
    assert Job(running).fetch().data["status"] == "started"
    t0 = time.time()
    assert Job(running).cancel() is True
    mrq_worker.wait_for_idle(timeout=10)
    assert time.time() - t0 < 3
    data = Job(running).fetch().data
    assert data["status"] == "cancel"
    assert mrq_worker.report()["jobs"] == []
    assert Job(running).cancel() is False  # already final
    assert mrq_worker.stop() == 0
    assert mrq_worker.report()["jobs"] == []
    counters = mrq_worker.report()["counters"]
    assert counters.get("cancel") == 1 and "interrupt" not in counters  # ended as cancelled...
    assert "skipped" not in counters  # ... and never requeued


def test_a_job_cancelled_between_its_fetch_and_its_start_is_stopped(mrq_worker, tmp_path):
    """Cancelled after the worker fetched it (status queued then) but before its greenlet started: the kill
    request must still stop it once it starts, not be lost (the job would run to its end, status 'cancel')."""
    from mrq.testing import wait_until
    dequeued = tmp_path / "dequeued"
    mrq_worker.start("--plugins", "tests.plugins.slow_dequeued", env={"MRQ_SLOW_DEQUEUED_FILE": str(dequeued)})
    job_id = queue_job(T + "Sleep", {"t": 30})
    wait_until(dequeued.exists, what="job fetched")  # the plugin holds the batch until it is cancelled, and 1 s
    assert Job(job_id).cancel() is True  # the heartbeat (every 0.2 s) reads the kill request meanwhile
    mrq_worker.wait_for_idle(timeout=5)
    assert Job(job_id).fetch().data["status"] == "cancel"


def test_cancel_queued_job_never_runs(mrq_worker):
    from bson import ObjectId

    from mrq.context import get_broker
    queued = queue_job(T + "Add", {"a": 1, "b": 2})
    assert Job(queued).cancel() is True
    get_broker().push("default", [str(ObjectId())])  # an id whose document is gone (deleted, expired): dropped
    mrq_worker.start()
    mrq_worker.wait_for_idle(timeout=10)
    data = Job(queued).fetch().data
    assert data["status"] == "cancel"
    assert "result" not in data
    assert mrq_worker.stop() == 0
    assert mrq_worker.report()["counters"].get("skipped") == 1


def test_a_concurrency_slot_expires_with_the_job_timeout(mrq_worker):
    """A max_concurrency slot is held until the job ends or, if its worker dies, until its timeout (+ 30 s)."""
    import time

    from mrq.context import get_broker
    from mrq.testing import wait_until
    mrq_worker.start(env={"MRQ_DEFAULT_JOB_TIMEOUT": "20"})
    job_id = queue_job(T + "Concurrent", {"t": 30})
    broker = get_broker()
    (slot,) = wait_until(lambda: broker.redis.zrange(broker.key("sem", T + "Concurrent"), 0, -1, withscores=True),
                         what="slot taken")
    assert slot[0].decode() == str(job_id) and 20 < slot[1] - time.time() <= 50, slot


def test_requeue_failed_job(mrq_worker):
    mrq_worker.start()
    job_id = queue_job(T + "Fail", {})
    mrq_worker.wait_for_idle()
    assert Job(job_id).fetch().data["status"] == "failed"
    assert Job(job_id).requeue() is True
    mrq_worker.wait_for_idle()
    data = Job(job_id).fetch().data
    assert data["status"] == "failed"
    assert len(data["traceback_history"]) == 2


def test_requeue_to_another_queue_of_a_listed_job_runs_it_once(mrq_worker, tmp_path):
    """A cancelled job still listed in queue a, requeued to b, with a worker on both: one run."""
    runs = tmp_path / "runs"
    job_id = queue_job(T + "Record", {"file": str(runs)}, queue="a")
    assert Job(job_id).cancel() is True
    assert Job(job_id).requeue(queue="b") is True
    mrq_worker.start("--greenlets", "2", queues=("a", "b"))
    mrq_worker.wait_for_idle()
    assert Job(job_id).fetch().data["status"] == "success"
    assert len(runs.read_text().splitlines()) == 1


def test_max_concurrency_fail_mode_keeps_the_original_behaviour(mrq_worker, tmp_path):
    config = tmp_path / "mrq-config.py"
    config.write_text(f"TASKS = {{{T + 'Concurrent'!r}: {{'on_max_concurrency': 'fail'}}}}\n")
    mrq_worker.start("--greenlets", "5", "--config", str(config))
    ids = queue_jobs(T + "Concurrent", [{"t": 1}] * 4)
    mrq_worker.wait_for_idle()
    statuses = sorted(Job(i).fetch().data["status"] for i in ids)
    assert statuses == ["maxconcurrency", "maxconcurrency", "success", "success"]
    again = queue_jobs(T + "Concurrent", [{"t": 0.1}] * 2)  # slots were released
    mrq_worker.wait_for_idle()
    assert {Job(i).fetch().data["status"] for i in again} == {"success"}


def test_max_concurrency_waits_instead_of_failing(mrq_worker_factory):
    """30 jobs of a task limited to 3, over 2 workers of 10 greenlets: all succeed, never more than 3 at once;
    a job that finds no free slot waits (back in Redis, no MongoDB write) and is woken by a finishing one."""
    workers = [mrq_worker_factory().start("--greenlets", "10") for _ in range(2)]
    ids = queue_jobs(T + "Throttled", [{"t": 0.3}] * 30)
    workers[0].wait_for_idle(timeout=60)
    docs = [Job(i).fetch().data for i in ids]
    assert {d["status"] for d in docs} == {"success"}
    assert {d.get("retry_count", 0) for d in docs} == {0}  # a wait is not a retry
    spans = [d["result"] for d in docs]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 3
    for w in workers:
        assert w.stop() == 0
    reports = [w.report()["counters"] for w in workers]
    deferred = sum(r.get("deferred", 0) for r in reports)
    assert 27 <= deferred <= 30 * 4, deferred  # each of the 27 others waited, woken promptly (few re-waits)
    print(f"deferrals: {deferred}, redis round trips: {sum(r['redis_roundtrips'] for r in reports)}")


def test_progress_subpool_and_run_task(mrq_worker):
    mrq_worker.start("--greenlets", "3")
    prog = queue_job(T + "Progress", {"steps": 3, "save": True})
    early = queue_job(T + "Progress", {"steps": 4, "stop_after": 1, "t": 0})  # 0.25, then success
    sub = queue_job(T + "SubPool", {"values": [1, 2, 3]})
    nested = queue_job(T + "RunTask", {"a": 5})
    ctx = queue_job(T + "GetContext", {})
    mrq_worker.wait_for_idle()
    assert Job(prog).fetch().data["progress"] == 1.0
    assert Job(early).fetch().data["progress"] == 1.0
    assert Job(sub).fetch().data["result"] == [1, 4, 9]
    assert "square 3" in job_logs(sub)
    assert Job(nested).fetch().data["result"] == 6
    result = Job(ctx).fetch().data["result"]
    assert result["job_id"] == str(ctx)
    assert result["greenlets"] == 3
    assert result["worker_id"] == str(mrq_worker.report()["_id"])


def test_queue_priority_pause_and_subqueues(mrq_worker):
    from mrq.queue import Queue
    low = queue_jobs(T + "Add", [{"a": 0, "b": i} for i in range(3)], queue="low")
    high = queue_jobs(T + "Add", [{"a": 1, "b": i} for i in range(3)], queue="high")
    sub = queue_job(T + "Add", {"a": 2, "b": 2}, queue="sub/one")
    Queue("paused").pause()
    paused = queue_job(T + "Add", {"a": 3, "b": 3}, queue="paused")
    assert Queue("paused").is_paused()
    mrq_worker.start("--greenlets", "1", queues=("high", "low", "sub/", "paused"))
    import time
    deadline = time.time() + 10
    while time.time() < deadline and Job(sub).fetch().data["status"] != "success":
        time.sleep(0.05)
    starts = {i: Job(i).fetch().data["datestarted"] for i in high + low}
    assert max(starts[i] for i in high) <= min(starts[i] for i in low)
    assert Job(sub).fetch().data["status"] == "success"
    assert Job(paused).fetch().data["status"] == "queued"
    Queue("paused").resume()
    assert Job(paused).wait(timeout=10) == 6


def test_parallel_strategy_takes_turns_between_queues(mrq_worker, tmp_path):
    """--dequeue_strategy parallel: each dequeue starts from the next queue (sequential would run all of 'a'
    first)."""
    runs = tmp_path / "runs"
    queue_of = {str(i): q for q in ("a", "b") for i in queue_jobs(T + "Record", [{"file": str(runs)}] * 3, queue=q)}
    mrq_worker.start("--dequeue_strategy", "parallel", queues=("a", "b"))
    mrq_worker.wait_for_idle()
    order = [queue_of[line.split()[0]] for line in runs.read_text().splitlines()]
    assert order in (["a", "b"] * 3, ["b", "a"] * 3)


def test_whitelist_pushes_back_other_tasks(mrq_worker):
    mrq_worker.start("--task_whitelist", T + "add")
    allowed = queue_job(T + "add", {"a": 1, "b": 1})
    other = queue_job(T + "Add", {"a": 1, "b": 1})
    assert Job(allowed).wait(timeout=10) == 2
    assert Job(other).fetch().data["status"] == "queued"
    assert mrq_worker.stop() == 0
    from mrq.context import get_broker
    sizes = get_broker().sizes(["default"])["default"]
    assert sum(sizes) == 1 and get_broker().inflight() == []  # pushed back, not dropped
    blocked = queue_job(T + "add", {"a": 2, "b": 2})
    mrq_worker.start("--task_blacklist", T + "add")  # a worker that may run it does; not the blacklisted one
    assert Job(other).wait(timeout=10) == 2
    assert Job(blocked).fetch().data["status"] == "queued"
    assert mrq_worker.stop() == 0
    assert sum(get_broker().sizes(["default"])["default"]) == 1 and get_broker().inflight() == []  # pushed back


def test_max_jobs_and_burst(mrq_worker):
    ids = queue_jobs(T + "add", [{"a": i, "b": 0} for i in range(5)])
    mrq_worker.start("--max_jobs", "3", wait=False)
    assert mrq_worker.proc.wait(30) == 0
    done = [Job(i).fetch().data["status"] for i in ids].count("success")
    assert done == 3
    chain = queue_job(T + "Chain", {"t": 0.3, "path": T + "add", "params": {"a": 9, "b": 0}})
    mrq_worker.start("--dequeue_strategy", "burst", "--greenlets", "2", wait=False)
    assert mrq_worker.proc.wait(30) == 0
    assert {Job(i).fetch().data["status"] for i in ids} == {"success"}
    chained = Job(chain).fetch().data["result"]  # queued by a running job: burst runs it before it exits
    assert Job(chained).fetch().data["status"] == "success"


def test_a_dequeue_that_leaves_ids_wakes_another_idle_worker(mrq_worker_factory):
    """Two idle workers block on the queue's wake-up list (for up to 30 s here); one push of two jobs wakes one
    worker, which takes one job (its only slot) and passes the wake-up on: the other worker takes the other."""
    workers = [mrq_worker_factory(env={"MRQ_MAX_LATENCY": "30"}).start() for _ in range(2)]
    ids = queue_jobs(T + "Sleep", [{"t": 1}] * 2)
    wait_for_idle(timeout=10)
    assert len({Job(i).fetch().data["worker"] for i in ids}) == 2
    assert [w.stop() for w in workers] == [0, 0]


def test_sigkill_leaves_in_flight_record(mrq_worker, mrq_config):
    import time

    from mrq.context import get_broker
    mrq_worker.start("--greenlets", "2")
    job_id = queue_job(T + "Sleep", {"t": 30})
    time.sleep(0.8)
    worker_id = str(mrq_worker.report()["_id"])
    mrq_worker.kill()
    broker = get_broker()
    records = broker.inflight()
    assert [(r.job_id, r.worker_id, r.queue) for r in records] == [(str(job_id), worker_id, "default")]
    time.sleep(2.5)  # heartbeat TTL of the test workers is 2 s
    assert broker.alive([worker_id]) == {worker_id: False}
    assert broker.requeue_inflight(records) == [str(job_id)]
    mrq_worker.start("--greenlets", "2")
    job = Job(job_id)
    deadline = time.time() + 10
    while time.time() < deadline and str(job.fetch().data["worker"]) == worker_id:
        time.sleep(0.05)
    assert job.data["status"] == "started"
    assert str(job.data["worker"]) != worker_id


def test_orphaned_in_flight_ids_are_requeued(mrq_worker, mrq_config):
    import time

    from mrq.context import get_broker
    mrq_worker.start()
    worker_id = str(mrq_worker.report()["_id"])
    broker = get_broker()
    job_id, recent = queue_jobs(T + "Add", [{"a": 2, "b": 2}] * 2, queue="elsewhere")  # not a queue of the worker
    # As if this worker had popped them and lost the reply: in flight on it, for queue default, one two minutes
    # ago (an orphan), one just now (maybe a dequeue whose reply is on its way: not an orphan yet).
    broker.redis.delete(broker.queue_key("elsewhere"))
    broker.redis.hset(broker.inflight_key, mapping={str(job_id): f"{worker_id} {time.time() - 120} default",
                                                    str(recent): f"{worker_id} {time.time()} default"})
    assert Job(job_id).wait(timeout=10) == 4
    assert mrq_worker.stop() == 0
    assert mrq_worker.report()["counters"]["orphans_requeued"] == 1
    # The recent one was left alone while the worker ran, and put back in its queue when it stopped.
    assert Job(recent).fetch().data["status"] == "queued"
    assert broker.inflight() == [] and broker.list_ids("default") == [str(recent)]


def test_double_sigint_interrupts(mrq_worker):
    import time
    mrq_worker.start("--greenlets", "2")
    job_id = queue_job(T + "Sleep", {"t": 30})
    time.sleep(0.8)
    mrq_worker.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert mrq_worker.proc.poll() is None  # still finishing its job
    assert mrq_worker.stop(signal.SIGINT) == 0
    assert Job(job_id).fetch().data["status"] == "interrupt"


def test_report_shows_running_jobs_with_stacks(mrq_worker):
    import time

    from mrq.testing import wait_until
    mrq_worker.start("--greenlets", "3")
    job_id = queue_job(T + "Progress", {"steps": 2, "t": 5})
    deadline = time.time() + 10
    report = mrq_worker.report()
    while time.time() < deadline and not report["jobs"]:
        time.sleep(0.2)
        report = mrq_worker.report()
    (running,) = report["jobs"]
    assert running["id"] == job_id and running["path"] == T + "Progress" and running["progress"] == 0.5
    # set_current_job_progress without save: stored on the job by the next report.
    wait_until(lambda: Job(job_id).fetch().data.get("progress") == 0.5, timeout=10, what="progress stored")
    assert any("gevent.sleep" in line for line in running["stack"])
    assert report["status"] in ("run", "full") and report["greenlets"] == 3  # not "wait": a job runs
    assert report["process"]["mem"]["rss"] > 10 and report["pid"] == mrq_worker.pid
    assert report["queues"] == ["default"]
    Job(job_id).cancel()


def test_max_time_and_max_memory_stop_gracefully(mrq_worker):
    mrq_worker.start("--max_time", "0.5", wait=False)
    assert mrq_worker.proc.wait(30) == 0
    # Memory is checked every report interval (2 s here): the job runs at the first check, which stops the
    # worker, and ends a second before the next one.
    job_id = queue_job(T + "Sleep", {"t": 3})
    mrq_worker.start("--max_memory", "1", env={"MRQ_REPORT_INTERVAL": "2"}, wait=False)
    assert mrq_worker.proc.wait(30) == 0
    assert Job(job_id).fetch().data["status"] == "success"  # stopped gracefully: the running job ended


def test_worker_waits_for_an_unreachable_mongodb_and_still_stops(mrq_urls, tmp_path):
    """SIGINT is sent once the worker says it waits for MongoDB (a fixed sleep raced its start-up on a loaded
    machine: the signal came before the worker's handler and killed it)."""
    import os
    import subprocess
    import sys

    from mrq.servers import free_port
    from mrq.testing import FAST_WORKER_ENV, kill_process_group, wait_until
    stderr = tmp_path / "stderr"
    env = dict(os.environ, **FAST_WORKER_ENV, MRQ_REDIS=mrq_urls.redis,
               MRQ_MONGODB_JOBS=f"mongodb://127.0.0.1:{free_port()}/nothing?directConnection=true")
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker"], env=env, stderr=err,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                start_new_session=True)
    try:
        wait_until(lambda: "is not reachable" in stderr.read_text() or proc.poll() is not None, timeout=60,
                   what="the worker waiting for MongoDB")
        assert proc.poll() is None, stderr.read_text()  # waiting, not crashed
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, stderr.read_text()
    finally:
        kill_process_group(proc.pid)
        proc.wait()


def test_a_dead_kernel_service_stops_the_worker_and_says_so(mrq_worker):
    """A kernel service that dies (here the status writer's loop) must not leave a half-alive worker that
    dequeues jobs whose statuses are never written: the worker stops, its jobs' statuses are stored at the
    stop, and it exits with code 1 saying why."""
    import subprocess

    job_id = queue_job(T + "Sleep", {"t": 0.5, "result": "ok"})
    mrq_worker.start("--plugins", "tests.plugins.break_writer", wait=False)
    try:
        code = mrq_worker.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker went on with a dead status writer") from None
    assert code == 1
    assert Job(job_id).fetch().data["status"] in ("queued", "success")  # never lost in between


def test_a_new_subqueue_is_served_at_once(mrq_worker):
    """A worker on 'sub/' learns of a subqueue created after it started from the wake-up of the push itself,
    not at the next periodic refresh (--subqueues_refresh_interval, 10 s)."""
    import time

    from mrq.context import get_broker

    mrq_worker.start("--subqueues_refresh_interval", "10", queues=("sub/",))
    first = queue_job(T + "Add", {"a": 1, "b": 1}, queue="sub/first")
    assert Job(first).wait(timeout=3) == 2
    started = time.monotonic()
    job_id = queue_job(T + "Add", {"a": 2, "b": 2}, queue="sub/second")
    assert Job(job_id).wait(timeout=5) == 4
    assert time.monotonic() - started < 3
    mrq_worker.wait_for_idle()
    assert get_broker().known_queues() == []  # both emptied, both forgotten


def test_after_redis_lost_its_data_a_worker_writes_its_in_flight_records_again(mrq_worker, mrq_config, tmp_path):
    """Redis restarted empty while a job runs: the worker notices with its next heartbeat and writes the job's
    in-flight record again, so that no rebuild of the queues runs it a second time elsewhere."""
    from mrq.context import get_broker
    from mrq.testing import wait_until

    mrq_worker.start("--greenlets", "2")
    runs = tmp_path / "runs"
    job_id = queue_job(T + "Record", {"file": str(runs), "t": 5})
    wait_until(lambda: runs.exists(), what="job started")
    broker = get_broker()
    broker.redis.flushall()
    (record,) = wait_until(lambda: broker.inflight(), timeout=5, what="the in-flight record written again")
    assert record.job_id == str(job_id) and record.worker_id == str(mrq_worker.report()["_id"])
    assert record.queue == "default"
    assert Job(job_id).wait(timeout=20) == "recorded"
    wait_until(lambda: not broker.inflight(), timeout=5, what="acknowledged")


# -- max_concurrency interleavings: deferrals, fallbacks, retries ---------------------------------------------

def _lines(path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_max_jobs_counts_jobs_started_not_deferrals(mrq_worker, tmp_path):
    """--max_jobs 3 with 3 jobs of a task limited to one at a time: two wait for the first; the worker runs all
    three, then stops (it used to count the deferrals, stop after one job and leave two queued)."""
    runs = tmp_path / "runs"
    ids = queue_jobs(T + "Limited", [{"file": str(runs), "t": 0.5, "n": i} for i in range(3)])
    mrq_worker.start("--greenlets", "3", "--max_jobs", "3")
    assert mrq_worker.proc.wait(timeout=60) == 0
    assert {Job(i).fetch().data["status"] for i in ids} == {"success"}
    assert len(_lines(runs)) == 3


def test_a_retry_keeps_its_delay_after_the_job_waited_past_its_fallback(mrq_worker, tmp_path):
    """A job that waited for a slot longer than its fallback timer (5-10 s) and then retried with a 60 s delay
    stays delayed while other jobs of its task release their slots (a leftover waiting entry used to promote it:
    the retry ran 0.02 s after its first run)."""
    import time

    runs = tmp_path / "runs"
    mrq_worker.start("--greenlets", "3")
    holder = queue_job(T + "Limited", {"file": str(runs), "t": 12})
    wait_until(lambda: runs.exists(), what="the holder started")
    retried = queue_job(T + "Limited", {"file": str(runs), "retry_delay": 60})
    others = queue_jobs(T + "Limited", [{"file": str(runs), "t": 0.2, "n": i} for i in range(2)])
    wait_until(lambda: all(Job(i).fetch().data["status"] == "success" for i in [holder, *others]), timeout=60,
               what="the holder and the others done")
    time.sleep(2)
    data = Job(retried).fetch().data
    assert data["status"] == "retry", data
    assert [r[0] for r in _lines(runs)].count(str(retried)) == 1  # not run again before its delay
    assert mrq_worker.stop() == 0
