"""Helpers of mrq-workflows' tests (not a conftest.py: other plugins' tests have theirs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mrq import status as st
from mrq.context import setup_context
from mrq.job import Job

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
T = "workflow_tasks."


def _wf_config(mrq_config: Any, mrq_urls: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """This process's MRQ context with the plugin enabled (its statuses forgotten after the test)."""
    for name in ("ALL_STATUSES", "FINAL_STATUSES", "WAITING_STATUSES"):
        monkeypatch.setattr(st, name, getattr(st, name))
    monkeypatch.setattr(st, "_ALLOWED_FROM", dict(st._ALLOWED_FROM))
    monkeypatch.syspath_prepend(str(HERE))
    prefix = {"redis_prefix": mrq_urls.prefix} if mrq_urls.prefix else {}
    yield setup_context(plugins=["workflows"], redis=mrq_urls.redis, mongodb_jobs=mrq_urls.mongodb, **prefix)


def start_worker(worker: Any, *args: str) -> Any:
    return worker.start("--plugins", "workflows", "--greenlets", "10", *args, env=ENV)


def doc(job_id: Any) -> dict[str, Any]:
    return Job(job_id).fetch().data or {}


def status(job_id: Any) -> str:
    return str(doc(job_id).get("status"))


#: The fixture: ``wf_config = wf_helpers.wf_config_fixture`` in a test module.
wf_config_fixture = pytest.fixture(_wf_config, name="wf_config")
