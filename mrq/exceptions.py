"""Every exception MRQ raises, in one place.

Two families:

* ``MRQError`` subclasses (regular ``Exception``) report bad input or bad
  configuration. Their message says what happened and how to fix it.
* ``JobInterrupt``-like classes derive from ``BaseException`` so that a task's
  ``except Exception:`` cannot swallow them: they end a job with a given status.
"""

from __future__ import annotations

from gevent import GreenletExit

__all__ = [
    "MRQError",
    "ConfigError",
    "TaskNotFound",
    "InvalidParams",
    "PluginError",
    "JobNotFound",
    "ConnectionsError",
    "MrqInterrupt",
    "TimeoutInterrupt",
    "AbortInterrupt",
    "RetryInterrupt",
    "MaxRetriesInterrupt",
    "MaxConcurrencyInterrupt",
    "CancelInterrupt",
    "JobInterrupt",
    "StopRequested",
]


class MRQError(Exception):
    """Base class of MRQ's user-facing errors."""


class ConfigError(MRQError):
    """A configuration value is missing, unknown or of the wrong type."""


class TaskNotFound(MRQError):
    """A task path does not import or does not name a task."""


class InvalidParams(MRQError):
    """Job params are not a dict or cannot be stored in MongoDB."""


class PluginError(MRQError):
    """A plugin is unknown, fails to load or misbehaves."""


class JobNotFound(MRQError):
    """No job document has this id."""


class ConnectionsError(MRQError):
    """A Redis or MongoDB URI is malformed or the server cannot be reached."""


class MrqInterrupt(BaseException):
    """Ends the current job with the status named by ``status``."""

    status = "failed"


class TimeoutInterrupt(MrqInterrupt):
    """The job ran longer than its timeout."""

    status = "timeout"


class AbortInterrupt(MrqInterrupt):
    """``abort_current_job()``: an unrecoverable error, no retry."""

    status = "abort"


class CancelInterrupt(MrqInterrupt):
    """The job was cancelled while it ran."""

    status = "cancel"


class MaxConcurrencyInterrupt(MrqInterrupt):
    """The task's ``max_concurrency`` slots were all taken."""

    status = "maxconcurrency"


class MaxRetriesInterrupt(MrqInterrupt):
    """A retry was asked for but ``max_retries`` was already reached."""

    status = "maxretries"


class RetryInterrupt(MrqInterrupt):
    """``retry_current_job()``: run the job again later."""

    status = "retry"

    def __init__(self, delay: float | None = None, queue: str | None = None,
                 max_retries: int | None = None) -> None:
        super().__init__(delay, queue, max_retries)
        self.delay = delay
        self.queue = queue
        self.max_retries = max_retries

    def __str__(self) -> str:
        return f"RetryInterrupt: delay={self.delay}, queue={self.queue}"


class JobInterrupt(GreenletExit):
    """The worker is shutting down now: the job becomes ``interrupt`` and is requeued."""


class StopRequested(GreenletExit):
    """The worker was asked to stop dequeuing (first SIGINT)."""
