"""``mrq-worker --processes 2 --plugins metrics``: one endpoint for the host, the sum of both processes; a scrape
still sees the counts of a process that was SIGKILLed, and another process takes over the port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from metrics_helpers import ENV, T, by_status, free_port, scrape, total, try_scrape
from mrq.context import connections
from mrq.job import queue_jobs
from mrq.testing import FAST_WORKER_ENV, PREFIX_ENV, wait_for_idle, wait_until

pytest.importorskip("supervisor")


def _children(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The mrq-worker processes under supervisord (grandchildren of the wrapper)."""
    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "mrq.cli" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE]


def _serving(port: int, procs: list[psutil.Process]) -> psutil.Process | None:
    for p in procs:
        try:
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in p.net_connections("tcp")):
                return p
        except psutil.NoSuchProcess:
            pass
    return None


def test_processes_share_one_endpoint_and_a_killed_process_keeps_its_counts(mrq_urls, mrq_config, tmp_path,
                                                                            request):
    port, folder = free_port(), tmp_path / "metrics"
    env = dict(os.environ, **FAST_WORKER_ENV, **ENV, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb,
               PYTHONUNBUFFERED="1")
    if mrq_urls.prefix:
        env[PREFIX_ENV] = mrq_urls.prefix
    env.pop("MRQ_SUPERVISED", None)
    proc = subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker", "--processes", "2", "--plugins", "metrics",
                             "--metrics_port", str(port), "--metrics_dir", str(folder), "--metrics_interval", "0.2",
                             "--greenlets", "2", "default"], cwd=str(request.config.rootpath), env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(lambda: (try_scrape(url) or {}) and total(scrape(url), "mrq_worker_greenlets") == 4, 60,
                   "both processes in the endpoint (2 x 2 greenlets)")
        ids = queue_jobs(T + "Sleep", [{"t": 0.1}] * 40)
        wait_for_idle()
        workers = {d["worker"] for d in connections.mongodb_jobs["mrq_jobs"].find({"_id": {"$in": ids}})}
        assert len(workers) == 2  # both processes ran some
        wait_until(lambda: by_status(scrape(url)) == {"success": 40}, what="40 successes counted")
        assert len({p.name.split("_")[-1] for p in Path(folder).glob("counter_*.db")}) == 2

        # SIGKILL the process that serves: its counts stay, the other one (or its restart) serves the port.
        children = _children(proc)
        server = _serving(port, children)
        assert server is not None and len(children) == 2
        server.send_signal(signal.SIGKILL)
        wait_until(lambda: (s := try_scrape(url)) and by_status(s) == {"success": 40}
                   and total(s, "mrq_worker_greenlets") == 4, 60, "the endpoint back, with the dead one's counts")
        assert not psutil.pid_exists(server.pid) or server.status() == psutil.STATUS_ZOMBIE
        more = queue_jobs(T + "Add", [{"a": 1}] * 10)
        wait_for_idle()
        assert more
        wait_until(lambda: by_status(scrape(url)) == {"success": 50}, what="50 successes counted")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
