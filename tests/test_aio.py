"""``async def`` tasks (issue 18): coroutines run on one event loop per worker process, mixed with plain tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mrq.job import Job, queue_job, queue_jobs
from mrq.logger import job_logs
from mrq.testing import wait_until

A = "tests.tasks.aio."
G = "tests.tasks.general."
ROOT = Path(__file__).resolve().parent.parent


def _data(job_id: object) -> dict:
    return Job(job_id).fetch().data  # type: ignore[arg-type, return-value]


def test_coroutine_tasks_mixed_with_plain_ones(mrq_worker):
    """Functions and Task.run, with logs, progress and the current job inside coroutines and their tasks."""
    mrq_worker.start("--greenlets", "4")
    add = queue_job(A + "Add", {"a": 41, "b": 1})
    func = queue_job(A + "sleep", {"t": 0.05, "result": "done"})
    plain = queue_job(G + "Add", {"a": 1, "b": 2})
    ctx = queue_job(A + "context", {})
    nested = queue_job(A + "sync_asyncio_run", {})
    mrq_worker.wait_for_idle()
    assert _data(add)["status"] == "success" and _data(add)["result"] == 42
    assert _data(add)["progress"] == 1.0
    assert "adding 41 and 1" in job_logs(add)
    assert _data(func)["result"] == "done"
    assert _data(plain)["result"] == 3
    assert _data(ctx)["result"] == {"job": str(ctx), "children": [str(ctx)] * 2, "after": str(ctx)}
    # a plain task of the same worker can still run a loop of its own
    assert _data(nested)["status"] == "success", _data(nested).get("traceback")


def test_a_thousand_sleeping_coroutines_overlap(mrq_worker):
    """1,000 jobs that each await asyncio.sleep(1) run together in one worker with --greenlets 1000."""
    mrq_worker.start("--greenlets", "1000")
    mrq_worker.wait_for_report()
    ids = queue_jobs(A + "sleep", [{"t": 1, "result": i} for i in range(1000)])
    start = time.monotonic()
    mrq_worker.wait_for_idle(timeout=60)
    elapsed = time.monotonic() - start
    jobs = list(Job(i).fetch().data for i in ids)
    assert {j["status"] for j in jobs} == {"success"}
    assert sorted(j["result"] for j in jobs) == list(range(1000))
    # overlap, not tight timing: one at a time would take 1,000 s
    first_end = min(j["dateupdated"] for j in jobs)
    last_start = max(j["datestarted"] for j in jobs)
    assert last_start < first_end, "the sleeps did not overlap"
    span = (max(j["dateupdated"] for j in jobs) - min(j["datestarted"] for j in jobs)).total_seconds()
    assert span < 6, span  # ~1.3 s measured (docs/performance.md); 1,000 s one at a time
    assert elapsed < 30, elapsed


def test_one_client_serves_every_job_and_fds_stay_flat(mrq_worker):
    """A client created lazily on the loop serves 2,000 jobs (10,000 in bench/); the fds stay constant."""
    mrq_worker.start("--greenlets", "100")
    ids = queue_jobs(A + "use_client", [{}] * 2000)
    mrq_worker.wait_for_idle(timeout=120)
    results = [_data(i) for i in ids]
    assert {r["status"] for r in results} == {"success"}, next(r["traceback"] for r in results
                                                               if r["status"] != "success")
    assert {r["result"]["created"] for r in results} == {1}
    assert len({r["result"]["client"] for r in results}) == 1
    assert sorted(r["result"]["calls"] for r in results) == list(range(1, 2001))
    by_order = sorted(results, key=lambda r: r["result"]["calls"])
    early, late = by_order[200]["result"]["fds"], by_order[-1]["result"]["fds"]
    # no loop, selector or socket pair per job (that would be +1,800 or more); the worker's own Redis and
    # MongoDB pools may still open a connection or two under load
    assert late <= early + 6, (early, late)


def test_cancel_and_timeout_cancel_the_coroutine(mrq_worker, tmp_path):
    mrq_worker.start("--greenlets", "4")
    cancel_marker, timeout_marker = tmp_path / "cancel", tmp_path / "timeout"
    cancelled = queue_job(A + "cancellable", {"t": 60, "marker": str(cancel_marker)})
    wait_until(lambda: _data(cancelled)["status"] == "started", what="the job started")
    assert Job(cancelled).cancel()
    wait_until(lambda: _data(cancelled)["status"] == "cancel", timeout=15, what="the job cancelled")
    wait_until(cancel_marker.exists, what="CancelledError inside the coroutine")
    assert cancel_marker.read_text() == "cancelled"

    timed = queue_job(A + "TimesOut", {"t": 60, "marker": str(timeout_marker)})
    wait_until(lambda: _data(timed)["status"] == "timeout", timeout=15, what="the job timed out")
    assert timeout_marker.read_text() == "cancelled"
    assert _data(timed)["exceptiontype"] == "TimeoutInterrupt"
    assert 1 <= _data(timed)["totaltime"] < 5


def test_retry_from_a_coroutine(mrq_worker):
    mrq_worker.start("--greenlets", "2")
    job_id = queue_job(A + "retry", {"delay": 0.1})
    wait_until(lambda: _data(job_id)["status"] == "maxretries", timeout=30, what="retried then maxretries")
    data = _data(job_id)
    assert data["retry_count"] == 1
    assert [h["status"] for h in data["traceback_history"]] == ["retry", "maxretries"]


def test_mrq_run_runs_a_coroutine_task_in_process(mrq_urls, mrq_config):
    env = dict(os.environ, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb)
    out = subprocess.run([sys.executable, "-m", "mrq.cli", "run", A + "Add", '{"a": 41, "b": 1}'], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_a_blocking_call_in_a_coroutine_is_reported_by_greentrace(mrq_worker, capfd):
    """The loop runs in a greenlet of gevent's hub: a coroutine that blocks blocks the hub, and mrq-greentrace
    charges the block to the job whose step blocked, with its line."""
    tasks = ROOT / "tests" / "tasks" / "aio.py"
    line = next(i for i, text in enumerate(tasks.read_text().splitlines(), 1) if "THE BLOCKING LINE" in text)
    mrq_worker.start("--plugins", "greentrace", "--greenlets", "4")
    quick = queue_job(A + "sleep", {"t": 0.01})
    blocker = queue_job(A + "block", {"t": 0.3})
    mrq_worker.wait_for_idle()
    data = _data(blocker)
    assert data["status"] == "success"
    assert data["blocked"]["count"] == 1 and data["blocked"]["ms"] >= 250, data["blocked"]
    assert data["blocked"]["where"].startswith(f"{tasks}:{line} in block"), data["blocked"]
    assert "blocked" not in _data(quick)
    assert mrq_worker.stop() == 0
    assert f"greentrace: job {blocker} ({A}block) ran" in capfd.readouterr().err


def test_the_readme_async_example_runs_as_written(mrq_urls, mrq_config, tmp_path):
    """README step 9, as written: a worker and mrq-run in the folder of its tasks_async.py."""
    import re
    from urllib.parse import urlsplit

    from mrq.testing import WorkerProcess

    blocks = [b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
              if b.startswith("# tasks_async.py\n")]
    assert len(blocks) == 1
    (tmp_path / "tasks_async.py").write_text(blocks[0])
    redis = urlsplit(mrq_urls.redis)
    worker = WorkerProcess(mrq_urls, str(tmp_path)).start("--greenlets", "50")
    try:
        pings = queue_jobs("tasks_async.Ping", [{"host": redis.hostname, "port": redis.port}] * 20)
        waits = queue_jobs("tasks_async.wait", [{"seconds": 1}] * 50)
        worker.wait_for_idle()
        assert [_data(i)["result"] for i in pings] == ["+PONG"] * 20
        assert [_data(i)["result"] for i in waits] == [1] * 50
        assert f"{redis.hostname}:{redis.port} answered +PONG" in job_logs(pings[-1])
    finally:
        worker.kill()
    env = dict(os.environ, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb)
    out = subprocess.run([sys.executable, "-m", "mrq.cli", "run", "tasks_async.wait", '{"seconds": 1}'],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "1"), out.stderr
