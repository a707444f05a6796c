"""The current process's MRQ context: config, connections, worker, and the job of each greenlet.

Task code uses::

    from mrq.context import log, get_current_job, retry_current_job, subpool_map
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import gevent

from mrq.connections import Connections
from mrq.exceptions import AbortInterrupt, RetryInterrupt
from mrq.job import queue_job, queue_jobs  # re-exported, as in the original MRQ

if TYPE_CHECKING:
    from mrq.broker import Broker
    from mrq.config import Config
    from mrq.job import Job
    from mrq.plugins import PluginManager
    from mrq.worker import Worker

__all__ = [
    "log", "connections", "get_current_job", "get_current_worker", "get_current_config",
    "set_current_config", "setup_context", "retry_current_job", "abort_current_job",
    "set_current_job_progress", "run_task", "subpool_map", "subpool_imap", "get_broker",
    "get_plugin_manager", "queue_job", "queue_jobs",
]

#: The logger of task code: its lines are stored per job in ``mrq_logs``.
log = logging.getLogger("mrq.current")

connections = Connections()

_state: dict[str, Any] = {"config": None, "worker": None, "broker": None}
#: greenlet -> job it works for (job greenlets and their subpool greenlets).
_greenlet_jobs: dict[Any, Job] = {}


def set_current_config(config: Config) -> None:
    """Make ``config`` the process's configuration (connections are re-created from it)."""
    _state["config"] = config
    _state["broker"] = None
    connections.configure(config)


def get_current_config() -> Config:
    """The process's configuration; set up from the environment on first use if nothing set it."""
    if _state["config"] is None:
        warnings.warn("MRQ context not set up: using the environment and ./mrq-config.py "
                      "(call mrq.context.setup_context() first to silence this)", stacklevel=2)
        setup_context()
    return _state["config"]


def setup_context(**kwargs: Any) -> Config:
    """Configure MRQ in a script or web app: ``setup_context(redis=..., mongodb_jobs=...)``.

    Keyword arguments override every other source (command line excluded:
    ``argv`` is not read).
    """
    from mrq.config import get_config

    config = get_config("common", argv=None, extra=kwargs)
    set_current_config(config)
    return config


def get_plugin_manager() -> PluginManager:
    """The plugin manager of the current configuration."""
    return get_current_config().plugin_manager  # type: ignore[attr-defined, no-any-return]


def get_broker() -> Broker:
    """The Redis side of MRQ for the current configuration."""
    if _state["broker"] is None:
        from mrq.broker import Broker
        _state["broker"] = Broker(connections.redis, get_current_config()["redis_prefix"])
    return _state["broker"]  # type: ignore[no-any-return]


def set_current_worker(worker: Worker | None) -> None:
    _state["worker"] = worker


def get_current_worker() -> Worker | None:
    """The worker running in this process, if any."""
    return _state["worker"]


def set_current_job(job: Job | None, greenlet: Any = None) -> None:
    """Bind ``job`` to ``greenlet`` (default: the current one); ``None`` unbinds."""
    greenlet = greenlet or gevent.getcurrent()
    if job is None:
        _greenlet_jobs.pop(greenlet, None)
    else:
        _greenlet_jobs[greenlet] = job


def get_current_job(greenlet: Any = None) -> Job | None:
    """The job the current greenlet (or ``greenlet``) works for, or ``None``."""
    return _greenlet_jobs.get(greenlet or gevent.getcurrent())


def greenlets_of(job: Job) -> list[Any]:
    """Every greenlet working for ``job`` (its own and its subpools')."""
    return [g for g, j in list(_greenlet_jobs.items()) if j is job]


def retry_current_job(delay: float | None = None, max_retries: int | None = None,
                      queue: str | None = None) -> None:
    """End the current job with status ``retry``: it runs again after ``delay`` seconds.

    :param delay: seconds to wait; default = the task's ``retry_delay`` times
        ``retry_backoff`` ** retry count, with jitter (exponential backoff).
    :param max_retries: override the task's ``max_retries``; past it the job becomes ``maxretries``.
    :param queue: run it again on this queue (default: the same queue).
    :raises InvalidParams: if ``queue`` cannot name a regular queue (the job fails, saying so).
    """
    if queue is not None:
        from mrq.broker import check_job_queue

        check_job_queue(queue)
    raise RetryInterrupt(delay=delay, queue=queue, max_retries=max_retries)


def abort_current_job() -> None:
    """End the current job with status ``abort`` (an error that no retry can fix)."""
    raise AbortInterrupt()


def set_current_job_progress(ratio: float, save: bool = False) -> None:
    """Record the current job's progress (0..1); stored with the next report, or now if ``save``."""
    job = get_current_job()
    if job is not None:
        job.set_progress(ratio, save=save)


def run_task(path: str, params: Mapping[str, Any]) -> Any:
    """Run another task synchronously, inside the current job (no new job document)."""
    from mrq.task import load_task

    return load_task(path).run_wrapped(dict(params))


def _bound(job: Job | None, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(item: Any) -> Any:
        if job is not None:
            set_current_job(job)
        try:
            return func(item)
        finally:
            if job is not None:
                set_current_job(None)
    return run


def subpool_imap(pool_size: int, func: Callable[[Any], Any], iterable: Iterable[Any],
                 unordered: bool = False) -> Iterator[Any]:
    """Like ``map`` over ``pool_size`` greenlets, lazily, bound to the current job.

    The child greenlets count as the job's own: its logs, timeout and cancel
    apply to them, and they are killed if the job ends. ``pool_size`` 0 or 1
    runs sequentially in the caller's greenlet.
    """
    if not pool_size or pool_size <= 1:
        yield from map(func, iterable)
        return
    from gevent.pool import Pool

    pool = Pool(pool_size)
    mapper = pool.imap_unordered if unordered else pool.imap
    try:
        yield from mapper(_bound(get_current_job(), func), iterable)
    finally:
        pool.kill()


def subpool_map(pool_size: int, func: Callable[[Any], Any], iterable: Iterable[Any]) -> list[Any]:
    """:func:`subpool_imap` collected in a list (ordered)."""
    return list(subpool_imap(pool_size, func, iterable))
