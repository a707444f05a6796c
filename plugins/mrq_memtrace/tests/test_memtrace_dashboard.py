"""mrq-memtrace's page and job panel in mrq-dashboard: the plugin loads without the dashboard; with it, the leak
report of each worker is listed and a job's memory figures shown."""

from __future__ import annotations

import pytest
from mrq.config import get_config
from mrq.context import connections

from mrq_memtrace.dashboard import fetch


def test_the_plugin_loads_without_the_dashboard():
    config = get_config("worker", argv=["--greenlets", "1"], env={}, extra={"plugins": ["memtrace"]})
    assert "memtrace" in config.plugin_manager.enabled


def test_the_page_and_the_panel_with_the_dashboard(mrq_config):
    pytest.importorskip("mrq_dashboard")
    config = get_config("common", argv=None, env={}, extra={"plugins": ["memtrace", "dashboard"]})
    hook = config.plugin_manager.hook
    assert [(p["name"], p["title"]) for g in hook.mrq_dashboard_pages() for p in g] == [("memory", "Memory leaks")]
    assert "No report yet" in fetch({})["text"]
    connections.mongodb_jobs["mrq_workers"].insert_many([
        {"name": "w1", "memtrace": {"mode": "objgraph", "tasks": [
            {"path": "tasks.Leak", "jobs": 4, "memory_diff": 4096, "types": [{"type": "Blob", "delta": 4000}]}]}},
        {"name": "w2", "memtrace": {"mode": "tracemalloc", "sites": [
            {"site": "tasks.py:12", "code": "CACHE.append(x)", "growth": 2048, "size": 4096, "count": 9,
             "intervals": 3}]}},
        {"name": "w3"}])
    rows = fetch({})["rows"]
    assert rows[0][:5] == [{"text": "w1", "link": "workers"}, "per job",
                           {"text": "tasks.Leak", "link": "jobs?path=tasks.Leak"}, 4, "+4.0 KiB"]
    assert rows[0][5] == "Blob +4000"
    assert rows[1][1:3] == ["tracemalloc", "tasks.py:12  CACHE.append(x)"] and len(rows) == 2
    job = {"memory_diff": 2048, "memory_growth": [{"type": "Blob", "count": 1000, "delta": 1000}]}
    panels = [p for g in hook.mrq_dashboard_panels(page="job", job=job) for p in g]
    assert panels == [{"title": "Memory (mrq-memtrace)",
                       "rows": [["memory_diff", "+2.0 KiB"], ["grew: Blob", "+1000 (now 1000)"]]}]
    assert [p for g in hook.mrq_dashboard_panels(page="job", job={"status": "success"}) for p in g] == []
