"""mrq-metrics in real ``mrq-worker`` processes: the counters by status equal the statuses stored in MongoDB."""

from __future__ import annotations

import time
from collections import Counter

from metrics_helpers import ENV, T, by_status, free_port, parse, scrape, total, try_scrape
from mrq.context import connections
from mrq.job import Job, queue_job, queue_jobs
from mrq.testing import wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

FINAL = {"success", "failed", "maxretries", "cancel", "abort", "timeout", "maxconcurrency", "maxworkerdeaths"}


def stored_statuses(ids) -> Counter[str]:
    return Counter(d["status"] for d in connections.mongodb_jobs["mrq_jobs"].find({"_id": {"$in": list(ids)}},
                                                                                {"status": 1}))


def test_counters_by_status_equal_the_statuses_stored_in_mongodb(mrq_worker, tmp_path):
    port, metrics_dir = free_port(), tmp_path / "metrics"
    cancelled_queued = queue_job(T + "Add", {"a": 1})  # cancelled before any worker saw it: counted by none
    assert Job(cancelled_queued).cancel()
    waited = queue_job(T + "Add", {"a": 2}, queue="early")  # waits ~1 s for the worker to start
    time.sleep(1.0)
    mrq_worker.start("--plugins", "metrics", "--metrics_port", str(port), "--metrics_dir", str(metrics_dir),
                     "--metrics_interval", "0.2", "--greenlets", "4", queues=("default", "early", "later"), env=ENV)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: try_scrape(url), what="the /metrics endpoint")
    running = queue_job(T + "Sleep", {"t": 30})
    wait_until(lambda: Job(running).fetch().data["status"] == "started", what="the job to start")
    ids = [waited, running]
    ids += queue_jobs(T + "Add", [{"a": i} for i in range(5)])
    ids += queue_jobs(T + "Fail", [{}, {}])
    ids += queue_jobs(T + "Retry", [{"max_retries": 1}] * 2)   # retry, then maxretries
    ids += queue_jobs(T + "Abort", [{}])
    ids += queue_jobs(T + "Slow", [{}])                        # timeout
    ids += queue_jobs(T + "OneAtATime", [{"t": 1}] * 3)        # one runs, the others end as maxconcurrency
    delayed = queue_job(T + "Add", {"a": 3}, queue="later", delay=1)
    ids.append(delayed)
    assert Job(running).cancel()                               # stopped while it runs
    mrq_worker.wait_for_idle()
    stored = stored_statuses(ids)
    assert set(stored) == {"success", "failed", "maxretries", "cancel", "abort", "timeout", "maxconcurrency"}
    assert stored["maxconcurrency"] == 2 and stored["cancel"] == 1

    def counted() -> dict[str, float] | None:
        samples = scrape(url)
        return samples if by_status(samples) == dict(stored) else None

    samples = wait_until(counted, what=f"counters equal to MongoDB's {dict(stored)}")
    assert total(samples, "mrq_job_retries_total") == 2
    assert total(samples, "mrq_job_retries_total", path=T + "Retry", queue="default") == 2
    assert total(samples, "mrq_jobs_ended_total", path=T + "Fail", status="failed") == 2
    # Wait and run histograms: one observation per execution (Retry ran 4 times; maxconcurrency ones never ran).
    runs = sum(stored.values()) - stored["maxconcurrency"] + 2
    assert total(samples, "mrq_job_run_seconds_count") == runs
    assert total(samples, "mrq_job_wait_seconds_count") == runs
    assert total(samples, "mrq_job_wait_seconds_sum", queue="early") >= 0.9       # queued ~1 s before a worker
    assert total(samples, "mrq_job_wait_seconds_sum", queue="later") < 0.5        # from its due time, not enqueue
    assert total(samples, "mrq_job_run_seconds_bucket", path=T + "Slow", le="0.25") == 0
    assert total(samples, "mrq_job_run_seconds_bucket", path=T + "Slow", le="0.5") == 1
    assert total(samples, "mrq_jobs_in_progress") == 0 and total(samples, "mrq_worker_greenlets") == 4
    # The queue gauges of its queues, the workers, and the status writer's figures.
    assert total(samples, "mrq_queue_jobs", queue="default") == 0
    assert total(samples, "mrq_workers") == 1
    assert total(samples, "mrq_status_writes_total") > 0 or wait_until(
        lambda: total(scrape(url), "mrq_status_writes_total") > 0, what="a worker report")
    assert mrq_worker.stop() == 0
    # After the stop, the files hold the same totals (what another process of the host would serve).
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    final = parse(generate_latest(registry).decode())
    assert by_status(final) == dict(stored)
    assert total(final, "mrq_jobs_in_progress") == 0 and total(final, "mrq_worker_greenlets") == 0  # live gauges
    assert total(final, "mrq_status_write_batches_total") >= 1


def test_in_progress_and_nothing_without_a_port(mrq_worker_factory, tmp_path):
    port, metrics_dir = free_port(), tmp_path / "metrics"
    worker = mrq_worker_factory().start("--plugins", "metrics", "--metrics_port", str(port), "--metrics_dir",
                                        str(metrics_dir), "--metrics_interval", "0.1", env=ENV)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: try_scrape(url), what="the /metrics endpoint")
    job = queue_job(T + "Sleep", {"t": 30})
    wait_until(lambda: total(scrape(url), "mrq_jobs_in_progress", path=T + "Sleep") == 1, what="1 in progress")
    assert Job(job).cancel()
    wait_until(lambda: total(scrape(url), "mrq_jobs_in_progress", path=T + "Sleep") == 0, what="0 in progress")
    assert worker.stop() == 0
    # --metrics_port 0 (the default): the plugin does nothing; no endpoint, no file.
    off = mrq_worker_factory().start("--plugins", "metrics", "--metrics_dir", str(metrics_dir / "off"), env=ENV)
    queue_job(T + "Add", {"a": 1})
    off.wait_for_idle()
    assert "metrics" not in off.report() and not (metrics_dir / "off").exists()
    assert off.stop() == 0


RAW_CONFIG = '''
RAW_QUEUES = {
    "crawl_raw": {
        "job_factory": lambda payload: {"path": "metrics_tasks." + payload, "params": {}},
        "retry_queue": "crawl_retries",
        "statuses_no_storage": ("started", "success"),
    },
}
'''


def test_raw_jobs_count_when_they_end_even_unstored(mrq_worker, tmp_path):
    from mrq.context import get_broker

    config = tmp_path / "raw-config.py"
    config.write_text(RAW_CONFIG)
    port = free_port()
    mrq_worker.start("--plugins", "metrics", "--metrics_port", str(port), "--metrics_dir", str(tmp_path / "m"),
                     "--metrics_interval", "0.1", "--config", str(config), queues=("crawl_raw",), env=ENV)
    get_broker().push_raw("crawl_raw", ["Add", "Add", "Add", "Fail"])
    mrq_worker.wait_for_idle()
    url = f"http://127.0.0.1:{port}/metrics"
    samples = wait_until(lambda: (s := scrape(url)) and by_status(s) == {"success": 3, "failed": 1} and s,
                         what="3 successes (never stored) and 1 failure counted")
    assert total(samples, "mrq_jobs_ended_total", queue="crawl_raw", path=T + "Add") == 3
    assert total(samples, "mrq_job_run_seconds_count", queue="crawl_raw") == 4
    assert total(samples, "mrq_job_wait_seconds_count") == 0  # a raw payload has no enqueue time
    assert stored_statuses([d["_id"] for d in connections.mongodb_jobs["mrq_jobs"].find()]) == {"failed": 1}
    assert mrq_worker.stop() == 0
