"""Every code block of the plugin's README runs as written: the two shell commands (a ``--processes 2`` worker on
port 9567, then ``curl`` of its /metrics), the ``mrq-config.py``, the ``prometheus.yml`` (``promtool check config``)
and the PromQL examples (``promtool``); and its metrics table lists exactly the metrics the plugin exports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from metrics_helpers import ENV, T, try_scrape
from mrq.config import get_config
from mrq.job import queue_job
from mrq.testing import FAST_WORKER_ENV, PREFIX_ENV, wait_for_idle, wait_until

from mrq_metrics.cluster import CLUSTER_METRICS
from mrq_metrics.figures import HELP

README = Path(__file__).resolve().parents[1] / "README.md"
RULES = Path(__file__).resolve().parents[1] / "rules" / "mrq-alerts.yml"
PROMTOOL = shutil.which("promtool")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def test_every_code_block_is_run_by_this_file():
    langs = [lang for lang, _ in re.findall(r"```(\w*)\n(.*?)```", README.read_text(), re.S)]
    assert sorted(langs) == ["promql", "python", "sh", "sh", "yaml"], langs


def test_metrics_table_lists_what_the_plugin_exports():
    table = set(re.findall(r"^\| `(mrq_[a-z_]+)` \|", README.read_text(), re.M))
    exported = {name + "_total" if name not in CLUSTER_METRICS and not name.endswith(("_seconds", "progress",
                                                                                        "greenlets")) else name
                for name in set(HELP) | set(CLUSTER_METRICS)}
    assert table == exported


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_shell_commands_as_written(mrq_urls, mrq_config, tmp_path, request):
    worker_cmd, curl_cmd = (b.strip() for b in blocks("sh"))
    assert "--metrics_port 9567" in worker_cmd and "9567" in curl_cmd
    if not _port_free(9567):
        pytest.skip("port 9567 is taken on this machine")
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    env = dict(os.environ, **FAST_WORKER_ENV, **ENV, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb)
    if mrq_urls.prefix:
        env[PREFIX_ENV] = mrq_urls.prefix
    env.pop("MRQ_SUPERVISED", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen(["bash", "-c", "exec " + worker_cmd], cwd=str(request.config.rootpath), env=env,
                            start_new_session=True)
    try:
        wait_until(lambda: try_scrape("http://127.0.0.1:9567/metrics"), 60, "port 9567")
        queue_job(T + "Add", {"a": 1}, queue="default")
        wait_for_idle()

        def curled() -> str:
            out = subprocess.run(["bash", "-c", curl_cmd], capture_output=True, text=True, env=env).stdout
            return out if "success" in out else ""

        out = wait_until(curled, 30, "the success counted")
        assert out.startswith("mrq_jobs_ended_total{") and f'path="{T}Add"' in out
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0


def test_the_config_file_as_written(tmp_path, monkeypatch):
    (config_block,) = blocks("python")
    (tmp_path / "mrq-config.py").write_text(config_block)
    monkeypatch.chdir(tmp_path)
    config = get_config("worker", argv=[], env={})
    assert "metrics" in config["plugins"]
    assert config["metrics_port"] == 9567 and config["metrics_ip"] == "0.0.0.0"


def test_the_prometheus_config_as_written(tmp_path):
    (block,) = blocks("yaml")
    data = yaml.safe_load(block)
    jobs = {c["job_name"]: c for c in data["scrape_configs"]}
    assert jobs["mrq-workers"]["static_configs"][0]["labels"] == {"pool": "crawlers", "region": "eu"}
    assert data["rule_files"] == ["mrq-alerts.yml"]
    if not PROMTOOL:
        pytest.skip("promtool missing: apt-get install -y prometheus")
    (tmp_path / "prometheus.yml").write_text(block)
    shutil.copy(RULES, tmp_path / "mrq-alerts.yml")
    checked = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_promql_examples_as_written(tmp_path):
    (block,) = blocks("promql")
    queries = [q for q in block.splitlines() if q.strip()]
    assert len(queries) == 4
    if not PROMTOOL:
        pytest.skip("promtool missing: apt-get install -y prometheus")
    rules = {"groups": [{"name": "readme", "rules": [{"record": f"readme:q{i}", "expr": q}
                                                     for i, q in enumerate(queries)]}]}
    (tmp_path / "readme.yml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run([PROMTOOL, "check", "rules", "readme.yml"], cwd=tmp_path, capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
