"""mrq-otel's spans with the SDK's in-memory exporter, jobs run in this process as a worker runs them (in their own
greenlets): one connected trace from a request to a sub-job, links or parents, the log fields, 10,000 jobs over 100
greenlets with no span lost or mixed, nothing stored without an SDK."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.pool
from bson import ObjectId
from mrq.context import connections, get_plugin_manager
from mrq.job import queue_job, queue_jobs
from mrq.logger import JobLogHandler
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from otel_helpers import T, by_name, exporter, hexid, otel_config_fixture, perform  # noqa: F401 - a fixture

from mrq_otel import plugin


@contextlib.contextmanager
def job_log_handler_for() -> Iterator[JobLogHandler]:
    """A worker's job log handler (lines buffered by job), on the tasks' logger at INFO."""
    logger = logging.getLogger("mrq.current")
    handler = JobLogHandler(plugins=get_plugin_manager())
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run(job_id: Any, worker: Any) -> Any:
    return gevent.spawn(perform, ObjectId(job_id), worker).get()  # in a greenlet of its own, as in a worker


def test_a_request_that_queues_a_job_that_queues_sub_jobs_is_one_connected_trace(otel_config):
    worker, spans = otel_config(), exporter()
    with trace.get_tracer("web").start_as_current_span("GET /signup") as request:
        parent_id = queue_job(T + "Parent", {"subpool": True})
    parent = run(parent_id, worker)
    children = [run(i, worker) for i in parent.result]
    assert [c.result for c in children] == [1, 2]
    done = spans.get_finished_spans()
    assert sorted(s.name for s in done) == ["GET /signup"] + ["process default"] * 3 + ["send default"] * 3
    send_parent, send_child, send_subpool = by_name(done, "send")
    process_parent, *process_children = by_name(done, "process")
    request_id = request.get_span_context().span_id
    # The request's span -> send -> (link) process of the parent -> send (its greenlet, and its subpool's) ->
    # (link) process of each child.
    assert send_parent.parent.span_id == request_id and send_parent.kind == SpanKind.PRODUCER
    assert [link.context.span_id for link in process_parent.links] == [send_parent.context.span_id]
    assert process_parent.parent is None and process_parent.kind == SpanKind.CONSUMER
    assert send_child.parent.span_id == process_parent.context.span_id
    assert send_subpool.parent.span_id == process_parent.context.span_id  # the subpool greenlet's context is empty
    for process, send in zip(process_children, (send_child, send_subpool), strict=True):
        assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert process_parent.attributes == {
        "messaging.system": "mrq", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": "default", "messaging.message.id": str(parent_id),
        "mrq.task.path": T + "Parent", "mrq.job.retries": 0, "mrq.job.status": "success"}
    assert send_parent.attributes["messaging.message.id"] == str(parent_id)
    # Stored: the creation context in the document, the attempt's ids with its status.
    assert parent.data["otel"]["traceparent"].split("-")[1:3] == [hexid(send_parent.context.trace_id, 32),
                                                                  hexid(send_parent.context.span_id)]
    assert parent.data["otel_run"] == {"trace_id": hexid(process_parent.context.trace_id, 32),
                                       "span_id": hexid(process_parent.context.span_id)}


def test_child_mode_makes_one_trace(otel_config):
    worker, spans = otel_config(otel_parent="child"), exporter()
    with trace.get_tracer("web").start_as_current_span("GET /signup") as request:
        parent_id = queue_job(T + "Parent", {})
    for child in run(parent_id, worker).result:
        run(child, worker)
    done = spans.get_finished_spans()
    assert len(done) == 5 and {s.context.trace_id for s in done} == {request.get_span_context().trace_id}
    send_parent, send_child = by_name(done, "send")
    process_parent, process_child = by_name(done, "process")
    assert process_parent.parent.span_id == send_parent.context.span_id and not process_parent.links
    assert process_child.parent.span_id == send_child.context.span_id


def test_one_send_span_per_batch_with_its_count_and_failures_recorded(otel_config):
    worker, spans = otel_config(), exporter()
    ids = queue_jobs(T + "Fail", [{}] * 3, queue="bulk")
    (send,) = spans.get_finished_spans()
    assert send.name == "send bulk" and send.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in send.attributes
    run(ids[0], worker)
    process = by_name(spans.get_finished_spans(), "process")[0]
    assert process.status.status_code == StatusCode.ERROR and process.status.description == "failed: ValueError"
    assert process.attributes["mrq.job.status"] == "failed"
    (event,) = process.events
    assert event.name == "exception" and event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "kaput"


def test_log_lines_carry_the_trace_and_span_ids(otel_config):
    worker, spans = otel_config(), exporter()
    with job_log_handler_for() as handler:
        job = run(queue_job(T + "Interleaved", {"switches": 2}), worker)
    steps = by_name(spans.get_finished_spans(), "step")
    assert handler._buffer[job.id] == [
        f"step {i} trace_id={hexid(s.context.trace_id, 32)} span_id={hexid(s.context.span_id)}"
        for i, s in enumerate(steps)]


def test_without_an_sdk_nothing_is_stored(otel_config, monkeypatch):
    otel_config()
    monkeypatch.setattr(plugin, "TRACER", trace.NoOpTracer())
    job_id = queue_job(T + "Child", {})
    doc = connections.mongodb_jobs["mrq_jobs"].find_one({"_id": job_id})
    assert "otel" not in doc


def test_10000_jobs_over_100_greenlets_lose_no_span_and_mix_none(otel_config):
    """Each job yields to the others 3 times (random sleeps), makes a child span and logs at each step: every
    process span is its job's, linked to its batch's send span; every step span is a child of its own job's
    process span; every log line names its own step span."""
    worker, spans = otel_config(), exporter()
    n = 10_000
    ids = queue_jobs(T + "Interleaved", [{"switches": 3, "sleep": 0.002}] * n)
    sends = spans.get_finished_spans()
    assert [s.attributes["messaging.batch.message_count"] for s in sends] == [1000] * 10
    spans.clear()
    mine = set(ids)  # one scan (a worker's $in of a batch's ids is as fast, a $in of 10,000 is not here)
    docs = {d["_id"]: d for d in connections.mongodb_jobs["mrq_jobs"].find({"path": T + "Interleaved"})
            if d["_id"] in mine}
    pool = gevent.pool.Pool(100)
    with job_log_handler_for() as handler:
        jobs = list(pool.imap_unordered(lambda i: perform(i, worker, docs[i]), ids))
    done = spans.get_finished_spans()
    process = {s.attributes["messaging.message.id"]: s for s in by_name(done, "process")}
    assert len(process) == n and set(process) == {str(i) for i in ids}
    batch_of = {str(i): k // 1000 for k, i in enumerate(ids)}
    for job_id, span in process.items():
        assert [link.context.span_id for link in span.links] == [sends[batch_of[job_id]].context.span_id]
        assert span.attributes["mrq.job.status"] == "success"
    assert all(job.result == [hexid(process[str(job.id)].context.span_id), 0] for job in jobs)  # never another's
    steps = by_name(done, "step")
    assert len(steps) == 3 * n
    assert all(s.parent.span_id == process[s.attributes["job"]].context.span_id for s in steps)
    step_ids = {hexid(s.context.span_id): s.attributes["job"] for s in steps}
    lines = [(str(job_id), line) for job_id, lines in handler._buffer.items() for line in lines]
    assert len(lines) == 3 * n
    assert all(step_ids[line.rsplit("span_id=", 1)[1]] == job_id for job_id, line in lines)
    assert Counter(len(lines) for lines in handler._buffer.values()) == {3: n}
