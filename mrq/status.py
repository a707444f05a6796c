"""Job statuses and the one table of allowed transitions.

Every status write in MRQ goes through :func:`allowed_from`: the MongoDB update
filters on the current status, so a final status never silently becomes
another final status (a cancelled job that finishes stays ``cancel``).
"""

from __future__ import annotations

__all__ = [
    "QUEUED", "STARTED", "SUCCESS", "FAILED", "RETRY", "MAXRETRIES", "CANCEL",
    "ABORT", "INTERRUPT", "TIMEOUT", "MAXCONCURRENCY", "MAXWORKERDEATHS",
    "ALL_STATUSES", "FINAL_STATUSES", "RUNNABLE_STATUSES", "allowed_from",
]

QUEUED = "queued"
STARTED = "started"
SUCCESS = "success"
FAILED = "failed"
RETRY = "retry"
MAXRETRIES = "maxretries"
CANCEL = "cancel"
ABORT = "abort"
INTERRUPT = "interrupt"
TIMEOUT = "timeout"
MAXCONCURRENCY = "maxconcurrency"
#: The job was running when its worker died ``--max_worker_deaths`` times: a poison job, never run again by itself.
MAXWORKERDEATHS = "maxworkerdeaths"

ALL_STATUSES = frozenset({QUEUED, STARTED, SUCCESS, FAILED, RETRY, MAXRETRIES, CANCEL, ABORT,
                          INTERRUPT, TIMEOUT, MAXCONCURRENCY, MAXWORKERDEATHS})

#: A job in one of these states has finished its life; only an explicit requeue revives it.
FINAL_STATUSES = frozenset({SUCCESS, FAILED, MAXRETRIES, CANCEL, ABORT, TIMEOUT, MAXCONCURRENCY, MAXWORKERDEATHS})

#: A worker may run a job whose document is in one of these states. ``retry`` and
#: ``interrupt`` jobs are back in Redis; ``started`` covers a job requeued after
#: its worker died; ``queued`` is the normal case.
RUNNABLE_STATUSES = frozenset({QUEUED, STARTED, RETRY, INTERRUPT})

_ALLOWED_FROM: dict[str, frozenset[str]] = {
    # Requeue revives any job, final or not.
    QUEUED: ALL_STATUSES,
    STARTED: RUNNABLE_STATUSES,
    CANCEL: RUNNABLE_STATUSES,
}


def allowed_from(status: str) -> frozenset[str]:
    """Statuses a job may be in for ``status`` to be written over it.

    A job's end (success, failure, retry, interrupt...) is written only over a
    status of :data:`RUNNABLE_STATUSES`: the worker's "started" write may not
    have reached MongoDB yet, so ``queued`` counts as running there.
    """
    if status not in ALL_STATUSES:
        raise ValueError(f"Unknown job status {status!r}; expected one of {sorted(ALL_STATUSES)}")
    return _ALLOWED_FROM.get(status, RUNNABLE_STATUSES)
