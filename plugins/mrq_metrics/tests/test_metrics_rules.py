"""The shipped Prometheus rules and Grafana dashboard load, use only metrics the plugin exports, and (with
``promtool``: Debian's ``prometheus`` package, installed by .ci/run) pass ``promtool check rules``, the rules' unit
tests (``promtool test rules``), and every dashboard query parses as PromQL; a real scrape passes
``promtool check metrics`` (Prometheus' naming conventions)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from mrq_metrics.cluster import CLUSTER_METRICS
from mrq_metrics.figures import HELP, Figures
from mrq_metrics.server import HostCollector, SharedDir

ROOT = Path(__file__).resolve().parents[1]
RULES, RULE_TESTS, DASHBOARD = ROOT / "rules" / "mrq-alerts.yml", ROOT / "rules" / "mrq-alerts.test.yml", \
    ROOT / "dashboards" / "mrq.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="promtool missing: apt-get install -y prometheus "
                                                         "(.ci/run installs it)")
#: Every metric family the plugin exports.
EXPORTED = set(HELP) | set(CLUSTER_METRICS)
_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
_DURATION = re.compile(r"^\d+[smhdwy]$")


def metric_names(expr: str) -> set[str]:
    """Names in a PromQL expression that look like MRQ metrics, without their sample suffix."""
    names = set()
    for name in re.findall(r"\b(mrq_[a-z_]+)\b", expr):
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in EXPORTED:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p["targets"]]


def test_rules_file_schema():
    data = yaml.safe_load(RULES.read_text())
    assert set(data) == {"groups"}
    alerts = {}
    for group in data["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            if "for" in rule:
                assert _DURATION.match(rule["for"]), rule["for"]
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("warning", "critical")
                assert {"summary", "description"} <= set(rule["annotations"])
                alerts[rule["alert"]] = rule
            assert metric_names(rule["expr"]) <= EXPORTED, rule["expr"]
    # The three the plugin promises: a queue backed up, workers gone, a failure rate.
    assert {"MRQQueueBackedUp", "MRQNoWorkers", "MRQHighFailureRate"} <= set(alerts)
    assert "mrq_queue_oldest_job_age_seconds" in alerts["MRQQueueBackedUp"]["expr"]


def test_grafana_dashboard_has_the_operator_panels_and_known_metrics():
    data = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in data["panels"]]
    for wanted in ("Throughput by status", "Wait time p50 / p95 / p99 by queue", "Oldest job age by queue",
                   "Failures by task path"):
        assert any(t.startswith(wanted) for t in titles), wanted
    wait = next(p for p in data["panels"] if p["title"].startswith("Wait time"))
    assert [t["expr"].split(",")[0] for t in wait["targets"]] == [f"histogram_quantile({q}" for q in
                                                                  (0.5, 0.95, 0.99)]
    assert len({p["id"] for p in data["panels"]}) == len(titles)
    assert {v["name"] for v in data["templating"]["list"]} == {"datasource", "queue"}
    for expr in dashboard_exprs():
        assert metric_names(expr) <= EXPORTED, expr


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules():
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                            cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"mrq:dashboard_panel_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$queue", ".*")}
        for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _scrape_text(tmp_path: Path) -> str:
    """A host endpoint's answer, from figures of fake jobs written to a real multiprocess directory."""
    import datetime

    shared = SharedDir(str(tmp_path / "shared"))
    shared.join()
    figures = Figures(shared.path)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    for i, status in enumerate(["success", "failed", "retry", "success"]):
        job = SimpleNamespace(id=i, datestarted=now.timestamp() - 0.01,
                              data={"queue": "default", "path": "tasks.A", "datequeued": now})
        figures.dequeued([job])
        figures.finished(job, status)
        figures.status_changed(i, status)
    figures.set_report("w", {"redis_roundtrips": 10, "mongodb_roundtrips": 3, "statuses_written": 4,
                             "status_batches": 1, "status_write_errors": 0})
    figures.greenlets = 4
    figures.flush({("default", "tasks.A"): 1})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(shared))
    return generate_latest(registry).decode()


def test_figures_of_one_process_as_served(tmp_path):
    from metrics_helpers import by_status, parse, total

    samples = parse(_scrape_text(tmp_path))
    assert by_status(samples) == {"success": 2, "failed": 1}
    assert total(samples, "mrq_job_retries_total") == 1
    assert total(samples, "mrq_job_run_seconds_count") == 4 and total(samples, "mrq_job_wait_seconds_count") == 4
    assert total(samples, "mrq_job_run_seconds_bucket", le="+Inf") == 4
    assert total(samples, "mrq_job_run_seconds_bucket", le="0.001") == 0
    assert total(samples, "mrq_jobs_in_progress") == 1 and total(samples, "mrq_worker_greenlets") == 4
    assert total(samples, "mrq_redis_roundtrips_total") == 10 and total(samples, "mrq_status_write_batches_total") == 1
    families = {name[: -len(s)] if any(name.endswith(s := x) for x in _SUFFIXES) else name for name, _ in samples}
    assert {n for n in families if n in EXPORTED} == set(HELP)


@needs_promtool
def test_promtool_lints_a_scrape(tmp_path):
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=_scrape_text(tmp_path), capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
