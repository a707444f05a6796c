"""The README's first command: mrq-embedded on a machine with neither Redis nor MongoDB running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from mrq.context import connections, setup_context
from mrq.embedded import ensure_servers
from mrq.job import Job, queue_job
from mrq.plugins import installed_plugins


def test_embedded_servers_are_joined_by_other_commands(tmp_path, monkeypatch):
    from mrq import embedded
    monkeypatch.chdir(tmp_path)
    try:
        redis_url, mongodb_uri = ensure_servers(tmp_path / ".mrq")
        assert ensure_servers(tmp_path / ".mrq") == (redis_url, mongodb_uri)  # joined, not restarted
        setup_context(embedded=True)
        assert connections.redis.ping()
        job_id = queue_job("mrq.examples.tasks.add", {"a": 1, "b": 2})
        assert Job(job_id).fetch().status == "queued"
    finally:
        connections.reset()
        for server in embedded._kept:
            server.stop()
        embedded._kept.clear()


def test_mrq_embedded_runs_the_examples_and_stops_cleanly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mrq.cli", "embedded"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, MRQ_LOG_LEVEL="WARNING"),
                            start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("Queued 20 Add jobs"):
                break
        text = "".join(lines)
        assert "MRQ is running on embedded servers" in text, text
        dashboard = None
        if "dashboard" in installed_plugins():  # printed first (before the banner; logs interleave), and serving
            banner = next(i for i, line in enumerate(lines) if line.startswith("MRQ is running"))
            first = next(line for line in lines if line.startswith("Dashboard: "))
            assert first.startswith("Dashboard: http://127.0.0.1:") and lines.index(first) < banner, text
            dashboard = first.split()[-1]
            with urllib.request.urlopen(dashboard + "api/statuses", timeout=30) as response:
                assert response.status == 200
        words = [w for line in lines for w in line.split()]
        redis_url = next(w for w in words if w.startswith("redis://"))
        mongodb_uri = next(w for w in words if w.startswith("mongodb://"))
        setup_context(redis=redis_url, mongodb_jobs=mongodb_uri)
        try:
            crawl = Job(text.split("Queued 20 Add jobs, Crawl ")[1].split()[0])
            assert crawl.wait(timeout=60) == {"pages": 30}
            assert connections.mongodb_jobs["mrq_jobs"].count_documents({"status": "success"}) >= 21
        finally:
            connections.reset()
    finally:  # never leave the servers running, even when an assertion failed
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    if dashboard is not None:  # stopped with the rest
        with pytest.raises(OSError):
            urllib.request.urlopen(dashboard, timeout=5)
    state = (tmp_path / ".mrq" / "servers.json").read_text()
    out = subprocess.run(["pgrep", "-f", str(tmp_path / ".mrq")], capture_output=True, text=True)
    assert out.stdout.strip() == "", f"servers left running: {out.stdout} ({state})"
