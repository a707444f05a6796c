"""The hooks MRQ calls, grouped by lifecycle phase.

A plugin implements any of them with ``@mrq.hookspecs.hookimpl``; arguments are passed by
keyword and an implementation may accept any subset of them. Unless a hook says
otherwise, every implementation is called (newest registered first) and return
values are ignored. ``docs/plugins.md`` documents each hook with an example.

Phases:

1. Plugin and configuration: ``mrq_add_hookspecs``, ``mrq_add_options``, ``mrq_configure``, ``mrq_job_statuses``.
2. Enqueue (any process that queues jobs): ``mrq_jobs_enqueuing``, ``mrq_jobs_enqueued``.
3. Worker lifecycle: ``mrq_worker_start``, ``mrq_worker_job_fields``, ``mrq_worker_services``,
   ``mrq_worker_report``, ``mrq_redis_data_lost``, ``mrq_worker_stopping``, ``mrq_worker_stop``.
4. Job lifecycle (inside a worker): ``mrq_jobs_dequeued``, ``mrq_job_execute``, ``mrq_job_log_fields``,
   ``mrq_job_finished``, ``mrq_job_status_changed``, ``mrq_jobs_status_changed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from bson import ObjectId

    from mrq.config import Config, Option
    from mrq.job import Job
    from mrq.worker import Worker

__all__ = ["hookspec", "hookimpl", "PROJECT"]

PROJECT = "mrq"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# 1. Plugin and configuration
# ---------------------------------------------------------------------------

@hookspec(historic=True)
def mrq_add_hookspecs(plugin_manager: pluggy.PluginManager) -> None:
    """Declare hooks of your own (the dashboard declares the hooks that add its pages).

    :param plugin_manager: the pluggy manager; call ``plugin_manager.add_hookspecs(module)``.

    Historic: a plugin registered later still gets called. Called once per plugin
    registration, before ``mrq_add_options``.
    """


@hookspec
def mrq_add_options() -> list[Option]:
    """Return the configuration options this plugin adds.

    :return: a list of :class:`mrq.config.Option`. Each becomes a ``--flag``, an
        ``MRQ_*`` environment variable and a key of ``mrq-config.py``, with the
        same precedence as the kernel's own options. Put ``commands=("worker",)``
        on an option that only a worker reads.

    Called while the configuration is resolved, after the enabled plugins are
    loaded. The lists of all plugins are concatenated; a name already taken is an error.
    """


@hookspec
def mrq_configure(config: Config) -> None:
    """Check or complete the resolved configuration.

    :param config: the :class:`mrq.config.Config`, all sources merged. It may be
        changed in place (derive values), and ``mrq.exceptions.ConfigError`` may be
        raised with a message naming the bad key and its fix: the command then
        stops before doing anything.

    Called once per process, at the end of :func:`mrq.config.get_config`.
    """


@hookspec
def mrq_job_statuses() -> list[dict[str, str]]:
    """Return the job statuses this plugin adds to MRQ's own.

    :return: a list of ``{"name": ..., "kind": "waiting" | "final"}``. A ``waiting`` status is that of a job
        stored in MongoDB but held back, in no queue (see ``mrq_jobs_enqueuing``): not runnable, not final;
        ``Job.cancel``/``cancel_jobs`` and ``Job.requeue`` apply to it and ``Job.wait`` keeps waiting. A
        ``final`` status ends a job like ``failed`` does (only a requeue revives it). Names are ``[a-z0-9_]``;
        MRQ's own statuses cannot be declared again, and two plugins may share a name only with the same kind.

    Called once per plugin registration, right after the enabled plugins are loaded (before
    ``mrq_add_options``); the statuses are then in ``mrq.status.ALL_STATUSES`` (and ``FINAL_STATUSES`` or
    ``WAITING_STATUSES``) for the whole process. A bad declaration is a ``PluginError``.
    """


# ---------------------------------------------------------------------------
# 2. Enqueue
# ---------------------------------------------------------------------------

@hookspec
def mrq_jobs_enqueuing(path: str, queue: str, docs: list[dict[str, Any]], options: dict[str, Any]
                       ) -> Callable[[list[ObjectId]], None] | None:
    """Jobs are about to be inserted: complete their documents, hold some back, take options of your own.

    :param path: the task path of all these jobs.
    :param queue: their queue.
    :param docs: the documents about to be inserted (``_id``, ``path``, ``params``, ``status`` = ``queued``...),
        one per job of the batch. Add fields (prefixed with your plugin's name); set ``status`` to a ``waiting``
        status you declared (``mrq_job_statuses``) to *hold a job back*: it is inserted but not pushed to Redis
        (nor passed to ``mrq_jobs_enqueued``); your plugin queues it later (``status`` back to ``queued``, then
        ``get_broker().push``).
    :param options: the keyword arguments of ``queue_job``/``queue_jobs`` that MRQ does not know
        (``depends_on=...``). **Pop the ones you handle**: any left once every implementation returned is an
        ``InvalidParams`` naming them (no plugin takes it), and nothing is written. Raise ``InvalidParams``
        yourself for a bad value.
    :return: ``None``, or a function called with the ids of the documents this batch created (ids given again
        to ``queue_jobs`` whose job exists are left out), after their insert and before the push: write what
        refers to them (edges of a graph), or act on what changed meanwhile.

    Called in the process that enqueues, once per batch of at most ``batch_size`` (1000) jobs, before anything
    is written: its cost is per batch, not per job. Not called for raw queues.
    """



@hookspec
def mrq_jobs_enqueued(queue: str, path: str, job_ids: list[ObjectId], delay: float) -> None:
    """Jobs were inserted in MongoDB and pushed to Redis.

    :param queue: the queue the jobs went to.
    :param path: the task path of all these jobs.
    :param job_ids: their ids, in the order of the params given to ``queue_jobs``.
    :param delay: seconds before they may run (0 = now).

    Called in the process that enqueued, once per ``queue_jobs`` batch (at most
    1000 jobs), after both writes succeeded; also for ids given again to ``queue_jobs`` whose earlier
    enqueue inserted the document but failed to push it (pushed by the retry).
    """


# ---------------------------------------------------------------------------
# 3. Worker lifecycle
# ---------------------------------------------------------------------------

@hookspec
def mrq_worker_start(worker: Worker) -> None:
    """A worker connected, created its indexes and is about to dequeue.

    :param worker: the :class:`mrq.worker.Worker` (``worker.id``, ``worker.config``,
        ``worker.queues``, ``worker.greenlets``).

    Raising stops the worker with a non-zero exit code before any job runs.
    """


@hookspec
def mrq_worker_job_fields(worker: Worker) -> list[str]:
    """Return the fields of job documents this plugin reads from ``job.data`` in the worker.

    :param worker: the starting worker.
    :return: field names (top-level or dotted) to fetch with each dequeued job's document, besides the kernel's
        own (``path``, ``params``, ``queue``, ``status``, ``retry_count``, ``datequeued``...). The lists of all
        plugins are merged; a field the documents lack is simply absent from ``job.data``.

    Called once per worker, right after ``mrq_worker_start`` and before the first dequeue. Fetching costs no
    extra round trip (the worker reads each batch's documents in one ``find``), only the bytes of the fields:
    the metrics plugin asks for ``dateupdated``, ``datedue`` and ``dateretry`` to time each job's wait. Raw jobs
    have no document when they start: their ``job.data`` never has these fields.
    """


@hookspec
def mrq_worker_services(worker: Worker) -> list[Callable[[], Any]]:
    """Return long-running functions to run beside the jobs of this worker.

    :param worker: the starting worker.
    :return: a list of callables taking no argument. Each runs in its own greenlet
        from the worker's start until its stop (it is then killed with
        ``GreenletExit``). A service that should run periodically loops and sleeps
        (``gevent.sleep``). If a service raises, the error is logged and the
        service is restarted after 5 seconds.

    Called once, right after ``mrq_worker_start``.
    """


@hookspec
def mrq_worker_report(worker: Worker, report: dict[str, Any]) -> None:
    """Add fields to the worker report before it is written to ``mrq_workers``.

    :param worker: the reporting worker.
    :param report: the document being written (``status``, ``queues``, ``process``,
        ``jobs``, ``counters``...). Add your own key, preferably named after your
        plugin; values must be BSON-serialisable.

    Called every ``--report_interval`` seconds and once more at stop.
    """


@hookspec
def mrq_redis_data_lost(worker: Worker) -> None:
    """MRQ's data in Redis is gone: Redis restarted without persistence (or was flushed), or this is the first
    worker ever started on it. Queues, delayed jobs and in-flight records are lost; job documents are not.

    :param worker: the worker that noticed it: one worker per loss, across all workers (the first whose
        heartbeat finds MRQ's marker key missing and sets it again).

    Called in a greenlet of its own, so an implementation may take long (rebuild the queues from MongoDB, as the
    cleaning plugin does) without delaying the heartbeat. Noticed within one ``--heartbeat_interval``.
    """


@hookspec
def mrq_worker_stopping(worker: Worker, reason: str) -> None:
    """The worker stopped dequeuing; its running jobs go on (or are being interrupted).

    :param worker: the worker.
    :param reason: why: ``signal`` (SIGINT, SIGTERM), ``max_jobs``, ``max_time``, ``max_memory``, ``burst``
        (the queues are empty), ``service`` (a kernel service died), ``error`` (the main loop crashed).

    Called once, in the worker's main greenlet, before it waits for its running jobs and calls
    ``mrq_worker_stop``: the place to stop taking in new work of your own (a scheduler, a feed).
    """


@hookspec
def mrq_worker_stop(worker: Worker) -> None:
    """The worker stopped dequeuing and its running jobs ended (or were interrupted).

    :param worker: the stopping worker. Its connections still work: a plugin can
        write its last state. Called before the last status flush and final report.
    """


# ---------------------------------------------------------------------------
# 4. Job lifecycle (inside a worker)
# ---------------------------------------------------------------------------

@hookspec
def mrq_jobs_dequeued(worker: Worker, jobs: list[Job]) -> None:
    """A batch of jobs was dequeued and their documents fetched; none has started yet.

    :param worker: the worker.
    :param jobs: the :class:`mrq.job.Job` objects (``job.id``, ``job.path``, ``job.params``, ``job.data``).

    Called in the worker's main greenlet once per batch: keep it fast.
    """


@hookspec(firstresult=True)
def mrq_job_execute(worker: Worker | None, job: Job) -> Any:
    """Run a job's task and return its result: implement it as a *wrapper*.

    :param worker: the worker, or ``None`` when ``mrq-run`` runs a task in-process.
    :param job: the running job.
    :return: the task's return value.

    MRQ's own implementation (registered ``trylast``) calls the task. Plugins
    should implement this hook with ``@hookimpl(wrapper=True)`` and
    ``result = yield`` to run code before and after the task *in the job's own
    greenlet* (tracers, timers, context managers); the ``yield`` raises the
    task's exception, if any. Use ``job.store(key=value)`` to save figures on the
    job document with its final status. firstresult: a non-wrapper
    implementation that returns a value replaces the task.
    """


@hookspec
def mrq_job_log_fields(job: Job) -> dict[str, str] | None:
    """Return fields to append to a line a job logs, as it is stored in ``mrq_logs``.

    :param job: the job the line belongs to (``get_current_job()`` of the greenlet that logged it: the job's own,
        or one of its subpools').
    :return: ``{name: value}``, appended to the stored line as `` name=value`` (several plugins: newest registered
        first), or ``None``. A correlation id, a trace id (the otel plugin adds ``trace_id`` and ``span_id``).

    Called once per line that task code logs through ``mrq.context.log`` in a worker, right after the line is
    formatted and before it is buffered, in the greenlet that logged it; only if some plugin implements the hook
    (else it costs nothing). Keep it well under a microsecond. An exception is ignored: the line is stored without
    the fields.
    """


@hookspec
def mrq_job_finished(worker: Worker | None, job: Job, status: str) -> None:
    """A job's execution ended; its status write is queued.

    :param worker: the worker (``None`` under ``mrq-run``).
    :param job: the job; ``job.result``, ``job.exception`` and ``job.traceback`` are set.
    :param status: its new status (``success``, ``failed``, ``retry``, ``timeout``, ...).

    Called in the job's greenlet, after ``mrq_job_execute`` returned or raised.
    The status reaches MongoDB in the next batched write (``--flush_interval``);
    use ``mrq_job_status_changed`` to act after it is stored.
    """


@hookspec
def mrq_job_status_changed(job_id: ObjectId, status: str, fields: dict[str, Any]) -> None:
    """A job's new status was written to MongoDB.

    :param job_id: the job.
    :param status: the status written.
    :param fields: the other fields written with it (``result``, ``traceback``,
        ``exceptiontype``, ``queue``...).

    Called by workers after each batched status write (once per job), and by the
    process calling :meth:`mrq.job.Job.cancel` or :meth:`mrq.job.Job.requeue`.
    Writes that were refused because the job had already reached another final
    status (a cancelled job finishing) are not reported.
    """


@hookspec
def mrq_jobs_status_changed(changes: list[tuple[ObjectId, str, dict[str, Any]]]) -> None:
    """Statuses were written to MongoDB: the same changes as ``mrq_job_status_changed``, one call per batch.

    :param changes: ``(job_id, status, fields)`` of each job whose status was written, in the order written.

    Called right after the calls of ``mrq_job_status_changed`` for the same changes: by workers once per batched
    status write, and by the process calling ``Job.cancel``, ``Job.requeue``, ``mrq.actions.cancel_jobs`` or
    ``requeue_jobs`` (once per call, or per chunk of 1000). Implement this one when you act on many jobs at once
    (one query for the whole batch instead of one per job). It runs in the worker's status writer: what it
    does delays the next write.
    """
