"""Job statuses and the one table of allowed transitions.

Every status write in MRQ goes through :func:`allowed_from`: the MongoDB update
filters on the current status, so a final status never silently becomes
another final status (a cancelled job that finishes stays ``cancel``).
"""

from __future__ import annotations

import re

__all__ = [
    "QUEUED", "STARTED", "SUCCESS", "FAILED", "RETRY", "MAXRETRIES", "CANCEL",
    "ABORT", "INTERRUPT", "TIMEOUT", "MAXCONCURRENCY", "MAXWORKERDEATHS",
    "ALL_STATUSES", "FINAL_STATUSES", "RUNNABLE_STATUSES", "WAITING_STATUSES", "allowed_from", "declare",
    "KERNEL_STATUSES",
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

#: Statuses of jobs held back by a plugin (declared with the hook ``mrq_job_statuses``, kind ``waiting``): stored in
#: MongoDB, in no queue, not final; the plugin queues them later. ``cancel`` and ``requeue`` apply to them, and
#: :meth:`mrq.job.Job.wait` keeps waiting. Empty unless a plugin declares one.
WAITING_STATUSES: frozenset[str] = frozenset()

#: The kernel's own statuses (a plugin may not declare these).
KERNEL_STATUSES = ALL_STATUSES

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


_NAME = re.compile(r"^[a-z][a-z0-9_]{1,30}$")
_KINDS = ("waiting", "final")


def declare(name: str, kind: str, plugin: str = "a plugin") -> bool:
    """Add a status of a plugin's own (see the hook ``mrq_job_statuses``); return ``False`` if already declared.

    :param kind: ``waiting`` (the job is stored but held back: not runnable, not final; cancel and requeue
        apply) or ``final`` (the job ended: only a requeue revives it).
    :raises ValueError: a bad name or kind, a kernel status, or a status already declared with another kind.
    """
    global ALL_STATUSES, FINAL_STATUSES, WAITING_STATUSES
    if kind not in _KINDS:
        raise ValueError(f"Status {name!r} of {plugin}: kind must be one of {_KINDS}, not {kind!r}.")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"Status {name!r} of {plugin}: a status name is 2-31 characters [a-z0-9_], "
                         "starting with a letter.")
    if name in KERNEL_STATUSES:
        raise ValueError(f"Status {name!r} of {plugin} is one of MRQ's own statuses: choose another name.")
    known = "waiting" if name in WAITING_STATUSES else "final" if name in FINAL_STATUSES else None
    if known is not None:
        if known != kind:
            raise ValueError(f"Status {name!r} of {plugin} is already declared as a {known} status by another "
                             "plugin: rename one of them.")
        return False
    ALL_STATUSES = ALL_STATUSES | {name}
    if kind == "final":
        FINAL_STATUSES = FINAL_STATUSES | {name}
    else:
        WAITING_STATUSES = WAITING_STATUSES | {name}
        _ALLOWED_FROM[CANCEL] = RUNNABLE_STATUSES | WAITING_STATUSES
    _ALLOWED_FROM[QUEUED] = ALL_STATUSES
    return True
