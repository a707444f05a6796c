"""Which job each greenlet works for: a job's own greenlet, its subpools' and the steps of its coroutines.

The lowest part of the process's state (:mod:`mrq.runtime`), on its own because it needs nothing but gevent:
running an ``async def`` task (:mod:`mrq.aio`, below the configuration) binds each step to its job too. User
code imports these names from :mod:`mrq.context`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gevent

if TYPE_CHECKING:
    from mrq.job import Job

__all__ = ["set_current_job", "get_current_job", "greenlets_of"]

#: greenlet -> job it works for (job greenlets and their subpool greenlets).
_greenlet_jobs: dict[Any, Job] = {}


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
