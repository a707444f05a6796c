"""MRQ (Mongo Redis Queue): a distributed task queue on Redis and MongoDB, with gevent workers.

The public API, importable from ``mrq`` directly (loaded lazily, so that a worker
can monkey-patch with gevent before pymongo and redis are imported)::

    from mrq import Task, queue_job, Job, hookimpl
"""

from __future__ import annotations

import importlib
from typing import Any

from mrq.version import __version__

__all__ = [
    "__version__", "Task", "Job", "Queue", "queue_job", "queue_jobs", "get_job_result", "count_jobs",
    "setup_context", "get_current_job", "get_current_worker", "get_current_config", "log",
    "retry_current_job", "abort_current_job", "set_current_job_progress", "hookimpl", "hookspec", "Option",
    "ConfigError", "MRQError",
]

_LOCATIONS = {
    "Task": "mrq.task", "Job": "mrq.job", "queue_job": "mrq.job", "queue_jobs": "mrq.job",
    "get_job_result": "mrq.job", "Queue": "mrq.queue", "count_jobs": "mrq.queue",
    "setup_context": "mrq.context", "get_current_job": "mrq.context", "get_current_worker": "mrq.context",
    "get_current_config": "mrq.context", "log": "mrq.context", "retry_current_job": "mrq.context",
    "abort_current_job": "mrq.context", "set_current_job_progress": "mrq.context",
    "hookimpl": "mrq.hookspecs", "hookspec": "mrq.hookspecs", "Option": "mrq.config",
    "ConfigError": "mrq.exceptions", "MRQError": "mrq.exceptions",
}


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'mrq' has no attribute {name!r}")
