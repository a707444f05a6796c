"""The current process's MRQ context: config, connections, worker, and the job of each greenlet.

Task code uses::

    from mrq.context import log, get_current_job, retry_current_job, subpool_map
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mrq.exceptions import AbortInterrupt, RetryInterrupt
from mrq.job import queue_job, queue_jobs  # re-exported, as in the original MRQ
from mrq.runtime import (  # the process's state, kept by the kernel in mrq.runtime; user code reads it here
    connections,
    get_broker,
    get_current_config,
    get_current_job,
    get_current_worker,
    get_plugin_manager,
    set_current_config,
    set_current_job,
    setup_context,
)
from mrq.runtime import greenlets_of as greenlets_of  # importable here as before (the worker's)
from mrq.runtime import set_current_worker as set_current_worker

if TYPE_CHECKING:
    from mrq.job import Job

__all__ = [
    "log", "connections", "get_current_job", "get_current_worker", "get_current_config",
    "set_current_config", "setup_context", "retry_current_job", "abort_current_job",
    "set_current_job_progress", "run_task", "subpool_map", "subpool_imap", "get_broker",
    "get_plugin_manager", "queue_job", "queue_jobs",
]

#: The logger of task code: its lines are stored per job in ``mrq_logs``.
log = logging.getLogger("mrq.current")


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
