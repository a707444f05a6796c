"""``mrq-dashboard --plugins metrics``: the cluster gauges at the dashboard's /metrics, behind its auth."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error

import pytest
from metrics_helpers import ENV, T, scrape, total
from mrq.job import queue_jobs
from mrq.testing import PREFIX_ENV


@pytest.fixture
def dashboard(mrq_urls, mrq_config, tmp_path):
    env = dict(os.environ, **ENV, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb, PYTHONUNBUFFERED="1")
    if mrq_urls.prefix:
        env[PREFIX_ENV] = mrq_urls.prefix
    proc = subprocess.Popen([sys.executable, "-m", "mrq_dashboard.cli", "--dashboard_port", "0", "--plugins",
                             "metrics", "--dashboard_httpauth", "ops:secret"], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = proc.stdout.readline()
    try:
        assert line.startswith("MRQ dashboard"), line
        yield line.split()[-1].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(10)


def test_dashboard_serves_the_cluster_gauges_behind_its_auth(dashboard, mrq_worker):
    queue_jobs(T + "Add", [{"a": i} for i in range(3)], queue="reports")
    queue_jobs(T + "Add", [{"a": i} for i in range(2)], queue="mail", delay=300)
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(dashboard + "/metrics")
    assert refused.value.code == 401
    samples = scrape(dashboard + "/metrics", auth="ops:secret")
    assert total(samples, "mrq_queue_jobs", queue="reports", state="waiting") == 3
    assert total(samples, "mrq_queue_jobs", queue="mail", state="delayed") == 2
    assert total(samples, "mrq_workers") == 0
    mrq_worker.start(queues=("idle",), env=ENV)  # a live worker; its empty queue shows, at 0
    samples = scrape(dashboard + "/metrics", auth="ops:secret")
    assert total(samples, "mrq_workers") == 1
    assert total(samples, "mrq_queue_jobs", queue="idle") == 0 and ("mrq_queue_jobs", (("queue", "idle"),
                                                                                       ("state", "waiting"))) in samples
    assert not any(name.startswith("mrq_jobs_ended") for name, _ in samples)  # worker figures: on the workers
