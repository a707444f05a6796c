"""mrq-scheduler: recurring jobs for MRQ (``--plugins scheduler``).

Pure parts (no server needed): :mod:`mrq_scheduler.cron` (5-field cron expressions and their next
fire time), :mod:`mrq_scheduler.entries` (``SCHEDULER_TASKS`` validation, identity hash, next run).
Stateful part: :class:`mrq_scheduler.scheduler.Scheduler` (lock, ``mrq_scheduled_jobs``, queueing).
The hooks are in :mod:`mrq_scheduler.plugin`.
"""

__version__ = "1.1.0"
