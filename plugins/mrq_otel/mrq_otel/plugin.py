"""The MRQ hooks of mrq-otel (entry point ``otel``): ``--plugins otel`` in every process that enqueues or runs jobs.

* Enqueue (``mrq_jobs_enqueuing``, once per batch of at most 1000 jobs): a ``PRODUCER`` span ``send <queue>``, child
  of the current span (a web request's), ended once the documents are inserted; its context, as the configured
  propagator writes it (W3C ``traceparent``, ``tracestate``, ``baggage``), is stored in each document's ``otel``
  field, so that retries, requeues (dashboard, cleaning plugin), delayed and held-back jobs keep it.
* Worker (``mrq_worker_job_fields`` fetches ``otel``; ``mrq_job_execute`` wrapper; ``mrq_job_finished``): a
  ``CONSUMER`` span ``process <queue>`` per attempt, current in the job's greenlet while the task runs (so the spans
  the task makes, and those of instrumented Redis and pymongo clients, are its children), linked to the creation
  context (``--otel_parent child``: its child instead), ended with the final status; the exception when it fails.
  Its ids are stored with the status (``otel_run``), and a job enqueued without a context (a raw job, or one queued
  by a process without the plugin) stores its first attempt's as its ``otel``: the later attempts link to it.
* ``mrq_job_log_fields``: ``trace_id`` and ``span_id`` on each line the job logs.
* Dashboard (``mrq_dashboard_panels``, ``mrq_dashboard_routes``): a panel on the job page with the trace ids, linked
  to ``/otel/trace?trace_id=...``, which redirects to ``--otel_trace_url`` with the id filled in.

Only ``opentelemetry-api`` is used: without an SDK every span is a no-op and nothing is stored.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Generator
from typing import Any

from mrq.config import Option
from mrq.context import get_current_config, get_current_job
from mrq.exceptions import RetryInterrupt
from mrq.hookspecs import hookimpl
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from mrq_otel import __version__

#: Job document field holding the creation context (what the propagator injects: ``traceparent``...).
FIELD = "otel"
#: Job document field holding the ids of the last attempt's process span (``trace_id``, ``span_id``, hex).
RUN_FIELD = "otel_run"
#: Final statuses that mark a process span as an error.
ERROR_STATUSES = frozenset({"failed", "timeout", "maxretries", "abort", "maxconcurrency", "maxworkerdeaths"})
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

#: A proxy until the application sets its tracer provider (then it forwards to it): safe to create at import.
TRACER = trace.get_tracer("mrq_otel", __version__)

#: The process span of each running job (for the log fields of its subpool greenlets and for mrq_job_finished).
_SPANS: weakref.WeakKeyDictionary[Any, trace.Span] = weakref.WeakKeyDictionary()
_settings = {"child": False}


def tracing() -> bool:
    """Whether spans can be recorded: a tracer provider (an SDK's) is set. Without one, the worker's hooks do
    nothing at all (the API's no-op spans would cost a few microseconds per job for nothing)."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def _check_url(template: str) -> None:
    if template and "{trace_id}" not in template:
        raise ValueError(f"{template!r} has no {{trace_id}} placeholder (e.g. http://jaeger:16686/trace/{{trace_id}})")


@hookimpl
def mrq_add_options() -> list[Option]:
    return [
        Option("otel_parent", str, "link", "otel: how a job's process span refers to the send span that created it: "
               "'link' (a span link: each attempt is a trace of its own, as OpenTelemetry's messaging conventions "
               "recommend) or 'child' (its child: one trace from the request to the last attempt).",
               commands=("worker",), choices=("link", "child")),
        Option("otel_trace_url", str, "", "otel: URL of a trace in your tracing UI, with {trace_id} "
               "(http://jaeger:16686/trace/{trace_id}): the dashboard's job page links to the job's traces.",
               commands=("dashboard",), check=_check_url),
    ]


# ---------------------------------------------------------------------------------------------------------- enqueue

def _current_parent() -> Any:
    """The context a send span starts in: the current one, or, in a greenlet of a job's subpool (whose context is
    empty: each greenlet has its own), the job's process span."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    job = get_current_job()
    span = _SPANS.get(job) if job is not None else None
    return trace.set_span_in_context(span) if span is not None else None


@hookimpl
def mrq_jobs_enqueuing(path: str, queue: str, docs: list[dict[str, Any]]
                       ) -> Callable[[list[Any]], None] | None:
    parent = _current_parent()
    attributes: dict[str, Any] = {"messaging.system": "mrq", "messaging.operation.type": "send",
                                  "messaging.operation.name": "send", "messaging.destination.name": queue,
                                  "mrq.task.path": path}
    if len(docs) == 1:
        attributes["messaging.message.id"] = str(docs[0]["_id"])
    else:
        attributes["messaging.batch.message_count"] = len(docs)
    span = TRACER.start_span(f"send {queue}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span, parent))
    if carrier:  # nothing without an SDK (and no incoming context): no byte stored
        for doc in docs:
            doc[FIELD] = carrier
    if not span.is_recording():
        return None

    def inserted(created: list[Any]) -> None:
        span.end()

    return inserted


# ----------------------------------------------------------------------------------------------------------- worker

@hookimpl
def mrq_worker_job_fields() -> list[str]:
    return [FIELD]


@hookimpl
def mrq_worker_start(worker: Any) -> None:
    _settings["child"] = worker.config.get("otel_parent") == "child"


#: Contexts extracted from carriers that hold a ``traceparent`` only, by its value: the jobs of a batch share theirs.
_EXTRACTED: dict[str, Any] = {}


def _extract(carrier: dict[str, str]) -> Any:
    """``propagate.extract(carrier)`` (4 µs), from a cache when the carrier is a lone ``traceparent`` (0.2 µs)."""
    if len(carrier) != 1 or "traceparent" not in carrier:
        return propagate.extract(carrier)
    key = carrier["traceparent"]
    created = _EXTRACTED.get(key)
    if created is None:
        if len(_EXTRACTED) >= 1024:
            _EXTRACTED.clear()
        created = _EXTRACTED[key] = propagate.extract(carrier)
    return created


@hookimpl
def mrq_worker_stop(worker: Any) -> None:
    """Export the spans a batching processor still holds before the process exits."""
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None and tracing():
        flush(5000)


def _process_span(job: Any, start_time: int | None = None) -> trace.Span:
    data = job.data or {}
    carrier = data.get(FIELD)
    parent, links = None, None
    if carrier:
        created = _extract(carrier)
        context = trace.get_current_span(created).get_span_context()
        if context.is_valid:
            if _settings["child"]:
                parent = created
            else:
                links = [Link(context)]
    queue = data.get("raw_queue") or data.get("queue") or "default"
    attributes = {"messaging.system": "mrq", "messaging.operation.type": "process",
                  "messaging.operation.name": "process", "messaging.destination.name": queue,
                  "messaging.message.id": str(job.id), "mrq.task.path": data.get("path", ""),
                  "mrq.job.retries": int(data.get("retry_count") or 0)}
    return TRACER.start_span(f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes,
                             links=links, start_time=start_time)


@hookimpl(wrapper=True)
def mrq_job_execute(worker: Any, job: Any) -> Generator[None, Any, Any]:
    if not tracing():
        return (yield)
    span = _process_span(job)
    _SPANS[job] = span
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        result = yield
    except BaseException as exc:
        if worker is None:  # mrq-run: no mrq_job_finished follows
            _end(span, "failed" if not isinstance(exc, RetryInterrupt) else "retry", exc)
        raise
    else:
        if worker is None:
            _end(span, "success", None)
        return result
    finally:
        otel_context.detach(token)
        if span.is_recording():
            ids = span.get_span_context()
            fields: dict[str, Any] = {RUN_FIELD: {"trace_id": format(ids.trace_id, "032x"),
                                                  "span_id": format(ids.span_id, "016x")}}
            if job.id is not None and not (job.data or {}).get(FIELD):  # later attempts link to this one
                carrier: dict[str, str] = {}
                propagate.inject(carrier, context=trace.set_span_in_context(span))
                fields[FIELD] = carrier
            job.store(**fields)


def _end(span: trace.Span, status: str, exc: BaseException | None) -> None:
    if span.is_recording():
        span.set_attribute("mrq.job.status", status)
        if status in ERROR_STATUSES:
            if exc is not None:
                span.record_exception(exc, escaped=True)
            span.set_status(Status(StatusCode.ERROR, f"{status}: {type(exc).__name__}" if exc is not None else status))
        elif exc is not None and status == "retry" and not isinstance(exc, RetryInterrupt):
            span.record_exception(exc)  # retried for this error (retry_on)
    span.end()


@hookimpl
def mrq_job_finished(job: Any, status: str) -> None:
    span = _SPANS.pop(job, None)
    if span is None:  # it never ran (cancelled before it started, a raw job whose job_factory failed)
        if not tracing():
            return
        start = int(job.datestarted * 1e9) if job.datestarted else None
        span = _process_span(job, start_time=start)
    _end(span, status, job.exception)


@hookimpl
def mrq_job_log_fields(job: Any) -> dict[str, str] | None:
    ids = trace.get_current_span().get_span_context()
    if not ids.is_valid:  # a subpool greenlet: the job's span
        span = _SPANS.get(job) if _SPANS else None
        if span is None:
            return None
        ids = span.get_span_context()
        if not ids.is_valid:
            return None
    return {"trace_id": format(ids.trace_id, "032x"), "span_id": format(ids.span_id, "016x")}


# -------------------------------------------------------------------------------------------------------- dashboard

def job_traces(job: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """``(label, trace_id, span_id)`` of a job document: where it was created, and its last attempt."""
    out: list[tuple[str, str, str | None]] = []
    carrier = job.get(FIELD)
    if isinstance(carrier, dict) and carrier:
        ids = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        if ids.is_valid:
            out.append(("created in", format(ids.trace_id, "032x"), format(ids.span_id, "016x")))
    run = job.get(RUN_FIELD)
    if isinstance(run, dict) and _TRACE_ID.match(str(run.get("trace_id", ""))):
        out.append(("last attempt", str(run["trace_id"]), str(run.get("span_id") or "") or None))
    return out


@hookimpl(optionalhook=True)
def mrq_dashboard_panels(page: str, job: dict[str, Any] | None) -> list[dict[str, Any]]:
    if page != "job" or not job:
        return []
    traces = job_traces(job)
    if not traces:
        return []
    linked = bool(get_current_config().get("otel_trace_url"))
    rows: list[list[Any]] = []
    for label, trace_id, span_id in traces:
        cell: Any = {"text": trace_id, "link": f"otel/trace?trace_id={trace_id}"} if linked else trace_id
        rows.append([f"{label}: trace", cell])
        if span_id:
            rows.append([f"{label}: span", span_id])
    return [{"title": "OpenTelemetry", "rows": rows}]


def trace_redirect(args: dict[str, str]) -> tuple[str, int, dict[str, str]]:
    """``/otel/trace?trace_id=<32 hex>``: a redirect to ``--otel_trace_url`` with the id filled in."""
    template = str(get_current_config().get("otel_trace_url") or "")
    trace_id = str(args.get("trace_id", "")).lower()
    if not template:
        return "No --otel_trace_url is configured.\n", 404, {"Content-Type": "text/plain; charset=utf-8"}
    if not _TRACE_ID.match(trace_id):
        return "trace_id must be 32 hexadecimal characters.\n", 400, {"Content-Type": "text/plain; charset=utf-8"}
    return "", 302, {"Location": template.replace("{trace_id}", trace_id), "Content-Type": "text/plain"}


@hookimpl(optionalhook=True)
def mrq_dashboard_routes() -> list[dict[str, Any]]:
    return [{"rule": "/otel/trace", "name": "otel-trace", "view": trace_redirect}]
