"""The dashboard's job page shows the job's trace ids, linked to ``/otel/trace``, which redirects to
``--otel_trace_url``; without the option, the ids are shown unlinked and the route answers 404."""

from __future__ import annotations

from typing import Any

import pytest
from mrq.context import connections, get_current_config
from mrq.job import queue_job
from opentelemetry import trace
from otel_helpers import T, exporter, fake_worker, hexid, otel_config_fixture, perform  # noqa: F401 - a fixture

from mrq_otel.plugin import trace_redirect

URL = "http://jaeger.example:16686/trace/{trace_id}"


def client(otel_config: Any, **options: Any) -> Any:
    from mrq_dashboard.app import create_app

    otel_config(plugins=["otel", "dashboard"], **options)
    return create_app(get_current_config()).test_client()


def panel(app: Any, job_id: Any) -> dict[str, Any]:
    answer = app.get(f"/api/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    (found,) = [p for p in answer.get_json()["panels"] if p["title"] == "OpenTelemetry"]
    return found


def test_the_job_page_links_to_both_traces(otel_config):
    app = client(otel_config, otel_trace_url=URL)
    spans = exporter()
    with trace.get_tracer("web").start_as_current_span("GET /"):
        job_id = queue_job(T + "Child", {})
    (send,) = [s for s in spans.get_finished_spans() if s.name == "send default"]
    job = perform(job_id, fake_worker())
    connections.mongodb_jobs["mrq_jobs"].update_one({"_id": job_id}, {"$set": {"otel_run": job.data["otel_run"]}})
    created, run = hexid(send.context.trace_id, 32), job.data["otel_run"]["trace_id"]
    rows = panel(app, job_id)["rows"]
    assert rows == [["created in: trace", {"text": created, "link": f"otel/trace?trace_id={created}"}],
                    ["created in: span", hexid(send.context.span_id)],
                    ["last attempt: trace", {"text": run, "link": f"otel/trace?trace_id={run}"}],
                    ["last attempt: span", job.data["otel_run"]["span_id"]]]
    answer = app.get(f"/otel/trace?trace_id={created}")
    assert answer.status_code == 302 and answer.headers["Location"] == URL.replace("{trace_id}", created)
    assert app.get("/otel/trace?trace_id=javascript:alert(1)").status_code == 400


def test_without_a_trace_url_the_ids_are_shown_unlinked(otel_config):
    app = client(otel_config)
    exporter()
    job_id = queue_job(T + "Child", {})
    rows = panel(app, job_id)["rows"]
    assert isinstance(rows[0][1], str) and len(rows[0][1]) == 32
    assert app.get(f"/otel/trace?trace_id={rows[0][1]}").status_code == 404
    assert trace_redirect({})[1] == 404


def test_a_trace_url_without_its_placeholder_is_refused(otel_config):
    from mrq.exceptions import ConfigError

    with pytest.raises(ConfigError, match="trace_id"):
        otel_config(otel_trace_url="http://jaeger/trace/")
