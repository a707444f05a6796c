"""Helpers of mrq-otel's tests: one in-memory exporter for the test process, jobs run in this process as a worker
runs them, spans read back from the file a worker process exports to.

Not a ``conftest.py`` (other plugins' tests have their own helpers modules).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from bson import ObjectId
from mrq.context import connections, get_current_config, get_plugin_manager, setup_context
from mrq.job import Job
from mrq.task import task_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
T = "otel_tasks."

_EXPORTER: InMemorySpanExporter | None = None


@pytest.fixture(name="otel_config")
def otel_config_fixture(mrq_urls: Any) -> Iterator[Callable[..., Any]]:
    """``otel_config(**options)``: this process's MRQ context with ``--plugins otel`` (and ``options``), pointed at the
    test servers; returns a fake worker, already announced to the plugins (``mrq_worker_start``)."""
    from mrq_otel import plugin

    def setup(**options: Any) -> Any:
        prefix = {"redis_prefix": mrq_urls.prefix} if mrq_urls.prefix else {}
        options.setdefault("plugins", ["otel"])
        setup_context(redis=mrq_urls.redis, mongodb_jobs=mrq_urls.mongodb, **prefix, **options)
        worker = fake_worker()
        get_plugin_manager().hook.mrq_worker_start(worker=worker)
        return worker

    try:
        yield setup
    finally:
        plugin._settings["child"] = False
        connections.reset()


def exporter() -> InMemorySpanExporter:
    """The in-memory exporter of this process's tracer provider (set once), emptied."""
    global _EXPORTER
    if _EXPORTER is None:
        _EXPORTER = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


def hexid(value: int, width: int = 16) -> str:
    return format(value, f"0{width}x")


#: What the hooks see of a worker (``worker.config``, ``worker.id``) when jobs run in this process.
def fake_worker() -> Any:
    return SimpleNamespace(id=ObjectId(), config=get_current_config(), jobs={})


def perform(job_id: ObjectId, worker: Any, doc: dict[str, Any] | None = None) -> Job:
    """Run a stored job in the current greenlet as a worker does: its document fetched (unless given), ``Job.perform``
    (hook mrq_job_execute), then mrq_job_finished. Nothing is written back."""
    if doc is None:
        doc = connections.mongodb_jobs["mrq_jobs"].find_one({"_id": job_id})
    job = Job(job_id, doc)
    outcome = job.perform(task_settings(job.path, get_current_config()), worker=worker)
    get_plugin_manager().hook.mrq_job_finished(worker=worker, job=job, status=outcome.status)
    job.data = {**(job.data or {}), **outcome.set}  # what the status write would store
    return job


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Spans a worker process exported to ``path`` (one JSON document per line, see the worker's config)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_name(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]
