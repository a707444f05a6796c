"""mrq-otel in a real ``mrq-worker`` process whose ``mrq-config.py`` configures the SDK (spans exported as JSON lines
to a file): retries, a requeue and a delay keep the creation context; a sub-job queued by a job; 100 greenlets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrq.context import connections
from mrq.job import Job, queue_job, queue_jobs
from mrq.logger import job_logs
from opentelemetry import trace
from otel_helpers import ENV, T, exporter, hexid, otel_config_fixture, read_spans  # noqa: F401 - a fixture

WORKER_CONFIG = '''
import os as _os

PLUGINS = ["otel"]


def _tracing():
    """The SDK, exporting each span as a JSON line to $OTEL_TEST_SPANS as soon as it ends."""
    from opentelemetry import trace
    from opentelemetry.sdk import trace as sdk_trace
    from opentelemetry.sdk.trace import export

    if isinstance(trace.get_tracer_provider(), sdk_trace.TracerProvider):
        return  # the file is read again by each configuration of the process
    out = open(_os.environ["OTEL_TEST_SPANS"], "a", buffering=1)
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(
        export.ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\\n")))
    trace.set_tracer_provider(provider)


_tracing()
'''


def start_worker(mrq_worker: Any, tmp_path: Path, *args: str) -> Path:
    config, spans = tmp_path / "mrq-config.py", tmp_path / "spans.jsonl"
    config.write_text(WORKER_CONFIG)
    mrq_worker.start("--config", str(config), *args, env={**ENV, "OTEL_TEST_SPANS": str(spans)})
    return spans


def named(spans: list[dict[str, Any]], prefix: str, **attributes: Any) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"].startswith(prefix)
            and all(s["attributes"].get(k) == v for k, v in attributes.items())]


def links(span: dict[str, Any]) -> list[str]:
    return [link["context"]["span_id"] for link in span["links"]]


def test_retries_requeues_delays_and_sub_jobs_keep_their_context(otel_config, mrq_worker, tmp_path):
    otel_config()
    here = exporter()
    spans_file = start_worker(mrq_worker, tmp_path, "--greenlets", "10")
    with trace.get_tracer("web").start_as_current_span("POST /orders"):
        retried = queue_job(T + "Retry", {"times": 2})
        failed = queue_job(T + "Fail", {})
        delayed = queue_job(T + "Child", {"n": 5}, delay=0.5)
        parent = queue_job(T + "Parent", {})
    sends = {s.attributes["messaging.message.id"]: "0x" + hexid(s.context.span_id) for s in here.get_finished_spans()
             if s.name.startswith("send")}
    mrq_worker.wait_for_idle()
    assert Job(failed).fetch().data["status"] == "failed"
    assert Job(failed).requeue()       # as the dashboard and the cleaning plugin requeue
    mrq_worker.wait_for_idle()
    assert mrq_worker.stop() == 0
    spans = read_spans(spans_file)

    # A job retried twice: three process spans, one per attempt, each linked to the one send span.
    attempts = named(spans, "process", **{"messaging.message.id": str(retried)})
    assert [s["attributes"]["mrq.job.retries"] for s in attempts] == [0, 1, 2]
    assert [s["attributes"]["mrq.job.status"] for s in attempts] == ["retry", "retry", "success"]
    assert [links(s) for s in attempts] == [[sends[str(retried)]]] * 3
    assert all(s["parent_id"] is None and s["kind"] == "SpanKind.CONSUMER" for s in attempts)
    # Its stored log lines name each attempt's span.
    lines = job_logs(retried).splitlines()
    assert [line.rsplit("span_id=", 1)[1] for line in lines] == [s["context"]["span_id"][2:] for s in attempts]
    assert all(f"trace_id={s['context']['trace_id'][2:]}" in line for s, line in zip(attempts, lines, strict=True))
    # A failed job, then requeued: both runs link to its creation; the failure is recorded.
    runs = named(spans, "process", **{"messaging.message.id": str(failed)})
    assert [s["attributes"]["mrq.job.status"] for s in runs] == ["failed", "failed"]
    assert [links(s) for s in runs] == [[sends[str(failed)]]] * 2
    assert runs[0]["status"]["status_code"] == "ERROR" and runs[0]["events"][0]["name"] == "exception"
    # A delayed job, and the sub-job queued by a job: the chain holds.
    assert links(named(spans, "process", **{"messaging.message.id": str(delayed)})[0]) == [sends[str(delayed)]]
    (process_parent,) = named(spans, "process", **{"messaging.message.id": str(parent)})
    (send_child,) = named(spans, "send")
    assert send_child["parent_id"] == process_parent["context"]["span_id"]
    (child_id,) = Job(parent).fetch().data["result"]
    (process_child,) = named(spans, "process", **{"messaging.message.id": child_id})
    assert links(process_child) == [send_child["context"]["span_id"]]
    # The last attempt's ids are stored with its status (the dashboard links to them).
    doc = Job(retried).fetch().data
    assert doc["otel_run"]["span_id"] == attempts[-1]["context"]["span_id"][2:]


def test_100_greenlets_in_a_worker_mix_no_span(otel_config, mrq_worker, tmp_path):
    otel_config()
    exporter()
    spans_file = start_worker(mrq_worker, tmp_path, "--greenlets", "100")
    n = 2000
    ids = queue_jobs(T + "Interleaved", [{"switches": 3, "sleep": 0.01}] * n)
    mrq_worker.wait_for_idle(timeout=120)
    assert mrq_worker.stop() == 0
    spans = read_spans(spans_file)
    process = {s["attributes"]["messaging.message.id"]: s for s in named(spans, "process")}
    assert set(process) == {str(i) for i in ids}
    results = {str(d["_id"]): d["result"] for d in connections.mongodb_jobs["mrq_jobs"].find(
        {"path": T + "Interleaved"}, {"result": 1})}
    assert all(results[i] == [span["context"]["span_id"][2:], 0] for i, span in process.items())
    steps = named(spans, "step")
    assert len(steps) == 3 * n
    assert all(s["parent_id"] == process[s["attributes"]["job"]]["context"]["span_id"] for s in steps)
    # They did run side by side: up to 100 process spans open at once.
    events = sorted([(s["start_time"], 1) for s in process.values()] + [(s["end_time"], -1) for s in process.values()])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 50 <= peak <= 100
