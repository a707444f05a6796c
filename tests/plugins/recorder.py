"""A plugin implementing every MRQ hook and recording each call, for the tests.

Enable it with ``--plugins tests.plugins.recorder``. When ``MRQ_RECORDER_FILE`` is set, each hook call
appends one JSON line ``{"hook": ..., "pid": ..., <summary of the arguments>}`` to that file (read at
each call, so a worker subprocess records to the file of its own environment).

It also:

* adds the option ``recorder_flag`` (bool): ``--recorder_flag``, ``MRQ_RECORDER_FLAG``, ``RECORDER_FLAG``;
* declares a hook of its own, ``mrq_recorder_event(name, data)`` (see :class:`RecorderSpecs`);
* wraps each job (``mrq_job_execute``, ``wrapper=True``) and stores ``recorder_seen=True`` on it;
* runs one service per worker, which records once and sleeps;
* adds ``report["recorder"]`` to the worker report.

It uses only MRQ's public API: ``mrq.hookimpl``-style markers from ``mrq.hookspecs`` and ``mrq.config.Option``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator
from typing import Any

from mrq.config import Option
from mrq.hookspecs import hookimpl, hookspec

FILE_ENV = "MRQ_RECORDER_FILE"

#: Calls recorded in this process, by hook name (also when no file is set).
counts: dict[str, int] = {}


def record(hook: str, **data: Any) -> None:
    """Count the call, and append it as a JSON line to ``$MRQ_RECORDER_FILE`` if that is set."""
    counts[hook] = counts.get(hook, 0) + 1
    path = os.environ.get(FILE_ENV)
    if not path:
        return
    line = json.dumps({"hook": hook, "pid": os.getpid(), **data}, default=str, sort_keys=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The calls recorded in ``path``, in order."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class RecorderSpecs:
    """The recorder's own hook, declared through ``mrq_add_hookspecs`` (as the dashboard declares its pages)."""

    @hookspec
    def mrq_recorder_event(self, name: str, data: dict[str, Any]) -> Any:  # pragma: no cover - a spec
        """Something happened in the recorder; other plugins may listen."""


def _job(job: Any) -> dict[str, Any]:
    return {"id": str(job.id), "path": job.path}


# -- 1. Plugin and configuration

@hookimpl
def mrq_add_hookspecs(plugin_manager: Any) -> None:
    plugin_manager.add_hookspecs(RecorderSpecs)
    record("mrq_add_hookspecs")


@hookimpl
def mrq_add_options() -> list[Option]:
    record("mrq_add_options")
    return [Option("recorder_flag", bool, False, "A flag of the recorder test plugin.")]


@hookimpl
def mrq_configure(config: Any) -> None:
    record("mrq_configure", command=config.get("_command"), recorder_flag=config.get("recorder_flag"),
           source=config.sources.get("recorder_flag"))


@hookimpl
def mrq_job_statuses() -> list[dict[str, str]]:
    record("mrq_job_statuses")
    return [{"name": "recorder_hold", "kind": "waiting"}, {"name": "recorder_gone", "kind": "final"}]


# -- 2. Enqueue

@hookimpl
def mrq_jobs_enqueuing(path: str, queue: str, docs: list[dict[str, Any]], options: dict[str, Any]
                       ) -> Callable[[list[Any]], None] | None:
    """Option ``recorder_hold=True`` holds the jobs back (status ``recorder_hold``, not pushed)."""
    hold = options.pop("recorder_hold", False)
    record("mrq_jobs_enqueuing", path=path, queue=queue, job_ids=[str(d["_id"]) for d in docs], hold=hold)
    if hold:
        for d in docs:
            d["status"] = "recorder_hold"
            d["recorder_held"] = True

    def after(created: list[Any]) -> None:
        record("mrq_jobs_enqueuing_after", job_ids=[str(i) for i in created])
    return after

@hookimpl
def mrq_jobs_enqueued(queue: str, path: str, job_ids: list[Any], delay: float) -> None:
    record("mrq_jobs_enqueued", queue=queue, path=path, job_ids=[str(i) for i in job_ids], delay=delay)


# -- 3. Worker lifecycle

@hookimpl
def mrq_worker_start(worker: Any) -> None:
    record("mrq_worker_start", worker=str(worker.id), queues=list(worker.queues), greenlets=worker.greenlets,
           recorder_flag=worker.config.get("recorder_flag"))


@hookimpl
def mrq_worker_job_fields(worker: Any) -> list[str]:
    record("mrq_worker_job_fields", worker=str(worker.id))
    return ["recorder_mark", "path"]  # "path" is the kernel's already: merged, not fetched twice


def _service() -> None:
    import gevent

    record("service_ran")
    while True:
        gevent.sleep(3600)


@hookimpl
def mrq_worker_services(worker: Any) -> list[Callable[[], Any]]:
    record("mrq_worker_services", worker=str(worker.id))
    return [_service]


@hookimpl
def mrq_worker_report(worker: Any, report: dict[str, Any]) -> None:
    report["recorder"] = {"calls": sum(counts.values()), "flag": bool(worker.config.get("recorder_flag"))}
    record("mrq_worker_report", worker=str(worker.id), status=report.get("status"))


@hookimpl
def mrq_worker_stop(worker: Any) -> None:
    record("mrq_worker_stop", worker=str(worker.id))


# -- 4. Job lifecycle

@hookimpl
def mrq_jobs_dequeued(worker: Any, jobs: list[Any]) -> None:
    record("mrq_jobs_dequeued", worker=str(worker.id), jobs=[_job(j) for j in jobs])


@hookimpl(wrapper=True)
def mrq_job_execute(worker: Any, job: Any) -> Generator[None, Any, Any]:
    record("mrq_job_execute", phase="before", job=str(job.id), worker=str(worker.id) if worker else None)
    job.store(recorder_seen=True)
    try:
        result = yield
    except BaseException as exc:
        record("mrq_job_execute", phase="after", job=str(job.id), error=type(exc).__name__)
        raise
    record("mrq_job_execute", phase="after", job=str(job.id), error=None)
    return result


@hookimpl
def mrq_job_log_fields(job: Any) -> dict[str, str]:
    record("mrq_job_log_fields", job=str(job.id))
    return {"recorder_job": str(job.id)}


@hookimpl
def mrq_job_finished(worker: Any, job: Any, status: str) -> None:
    record("mrq_job_finished", job=str(job.id), status=status, worker=str(worker.id) if worker else None,
           mark=(job.data or {}).get("recorder_mark"))


@hookimpl
def mrq_job_status_changed(job_id: Any, status: str, fields: dict[str, Any]) -> None:
    record("mrq_job_status_changed", job=str(job_id), status=status, fields=sorted(fields))


@hookimpl
def mrq_jobs_status_changed(changes: list[tuple[Any, str, dict[str, Any]]]) -> None:
    record("mrq_jobs_status_changed", changes=[[str(i), s] for i, s, _ in changes])


@hookimpl
def mrq_worker_stopping(worker: Any, reason: str) -> None:
    record("mrq_worker_stopping", worker=str(worker.id), reason=reason, running=len(worker.jobs))


@hookimpl
def mrq_redis_data_lost(worker: Any) -> None:
    record("mrq_redis_data_lost", worker=str(worker.id))
