"""mrq-cleaning: MRQ's maintenance, automatic.

Enabled in a worker (``--plugins cleaning``), it requeues jobs of dead workers, jobs of which Redis lost
track (lost between the MongoDB insert and the Redis push, interrupted, retried, started), and rebuilds the
queues after Redis lost its data. The same passes are tasks, runnable by hand::

    mrq-run mrq_cleaning.RequeueLostJobs
    mrq-run mrq_cleaning.RequeueStartedJobs '{"timeout_margin": 60}'

Bulk cancel/requeue by filter: :mod:`mrq.actions` (re-exported by :mod:`mrq_cleaning.actions`).
"""

from __future__ import annotations

from typing import Any

from mrq import status as st
from mrq.task import Task

from mrq_cleaning.core import Cleaner

__version__ = "1.0.0"

__all__ = ["RequeueDeadWorkerJobs", "RequeueInterruptedJobs", "RequeueLostJobs", "RequeueRetryJobs",
           "RequeueStartedJobs", "RebuildQueues", "Cleaner"]


class _CleaningTask(Task):
    """Runs one pass under the same Redis lock as the workers' service. Params override the
    ``cleaning_*`` options without their prefix: ``{"grace": 0, "max_scan": 1000}``."""

    max_concurrency = 1
    pass_name = ""

    def run(self, params: dict[str, Any]) -> Any:
        from mrq.context import get_current_config

        config = dict(get_current_config())
        for key, value in (params or {}).items():
            config["cleaning_" + key] = value
        cleaner = Cleaner(config)
        result = cleaner.run_locked(self.pass_name, lambda: self.clean(cleaner), blocking_timeout=60)
        if result is None:
            return {"skipped": "another worker holds the lock of this pass"}
        return result

    def clean(self, cleaner: Cleaner) -> Any:
        raise NotImplementedError


class RequeueDeadWorkerJobs(_CleaningTask):
    """Jobs in flight on workers whose heartbeat is gone: back at the head of their queue."""

    pass_name = "dead"

    def clean(self, cleaner: Cleaner) -> Any:
        return {"requeued": cleaner.requeue_dead_workers()}


class RequeueInterruptedJobs(_CleaningTask):
    """``interrupt`` jobs that are neither queued nor in flight (a crash between the status write and the
    requeue): back at the head of their queue, status ``queued``."""

    pass_name = "interrupt"

    def clean(self, cleaner: Cleaner) -> Any:
        return cleaner.requeue_untracked([st.INTERRUPT], "interrupt")


class RequeueRetryJobs(_CleaningTask):
    """``retry`` jobs whose id is in no Redis structure: back into their delayed set at ``dateretry``
    (delayed retries otherwise come back by themselves)."""

    pass_name = "retry"

    def clean(self, cleaner: Cleaner) -> Any:
        return cleaner.requeue_untracked([st.RETRY], "retry")


class RequeueLostJobs(_CleaningTask):
    """``queued`` (and ``started``) jobs of which Redis has no trace, older than ``grace`` seconds."""

    pass_name = "lost"

    def clean(self, cleaner: Cleaner) -> Any:
        return cleaner.requeue_untracked([st.QUEUED, st.STARTED], "lost")


class RequeueStartedJobs(_CleaningTask):
    """``started`` jobs older than their timeout plus ``timeout_margin`` that no live worker runs."""

    pass_name = "started"

    def clean(self, cleaner: Cleaner) -> Any:
        return cleaner.started_pass()


class RebuildQueues(_CleaningTask):
    """Every status at once (queued, retry, interrupt, started): what the service does when Redis lost its
    data."""

    pass_name = "lost"

    def clean(self, cleaner: Cleaner) -> Any:
        return cleaner.lost_pass()
