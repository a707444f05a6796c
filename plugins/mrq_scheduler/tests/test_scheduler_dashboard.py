"""The scheduler's page of mrq-dashboard: loads without the dashboard, lists the stored entries with it."""

from __future__ import annotations

import datetime as dt

import pytest
from mrq_scheduler.dashboard import fetch
from mrq_scheduler.scheduler import COLLECTION

from mrq.config import get_config
from mrq.context import connections


def test_the_plugin_loads_without_the_dashboard():
    config = get_config("worker", argv=[], env={}, extra={"plugins": ["scheduler"]})
    assert "scheduler" in config.plugin_manager.enabled


def test_the_page_with_the_dashboard(mrq_config):
    pytest.importorskip("mrq_dashboard")
    config = get_config("common", argv=None, env={}, extra={"plugins": ["scheduler", "dashboard"]})
    pages = [p for group in config.plugin_manager.hook.mrq_dashboard_pages() for p in group]
    assert [(p["name"], p["title"]) for p in pages] == [("scheduled", "Scheduled jobs")]
    assert "No scheduled entry" in fetch({})["text"]
    job = "6b0b0000000000000000abcd"
    connections.mongodb_jobs[COLLECTION].insert_one({
        "hash": "h", "path": "tasks.Report", "params": {"day": 1}, "queue": "cron", "description": "every 60 s",
        "next_run": dt.datetime(2026, 1, 1, 12), "datelastqueued": dt.datetime(2026, 1, 1, 11, 59),
        "last_job": job, "queued_count": 3})
    data = fetch({})
    assert data["rows"] == [[{"text": "tasks.Report", "link": "jobs?path=tasks.Report"}, '{"day": 1}', "cron",
                             "every 60 s", dt.datetime(2026, 1, 1, 12), dt.datetime(2026, 1, 1, 11, 59),
                             {"text": job, "link": f"jobs/{job}"}, 3]]
