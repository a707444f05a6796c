"""The MRQ hooks of mrq-scheduler (entry point ``scheduler``): ``mrq-worker --plugins scheduler``.

* ``mrq_add_options``: ``--scheduler_interval`` (seconds between checks), ``--scheduler_timezone``,
  ``--scheduler_orphan_ttl`` (seconds before an entry that no worker declares is deleted).
* ``mrq_configure``: validates ``SCHEDULER_TASKS`` and the options (every command; a bad entry stops it,
  exit code 2).
* ``mrq_worker_services``: the check loop (:meth:`mrq_scheduler.scheduler.Scheduler.run_forever`).
* ``mrq_worker_report``: ``report["scheduler"]``.
* ``mrq_worker_stop``: lets a check in progress finish before the worker kills its services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mrq.config import Option
from mrq.exceptions import ConfigError
from mrq.hookspecs import hookimpl
from mrq_scheduler.dashboard import mrq_dashboard_pages  # noqa: F401 - the "Scheduled jobs" page of mrq-dashboard
from mrq_scheduler.entries import parse_entries
from mrq_scheduler.scheduler import ORPHAN_TTL, Scheduler, min_orphan_ttl

#: The scheduler of each worker of this process, by worker id.
SCHEDULERS: dict[Any, Scheduler] = {}


@hookimpl
def mrq_add_options() -> list[Option]:
    return [
        Option("scheduler_interval", float, 1.0,
               "Seconds between two checks of SCHEDULER_TASKS by the scheduler plugin.", commands=("worker",)),
        Option("scheduler_timezone", str, "UTC",
               "Time zone of SCHEDULER_TASKS 'dailytime' and 'cron' entries without a 'timezone' key.",
               commands=("worker",)),
        Option("scheduler_orphan_ttl", float, ORPHAN_TTL,
               "Seconds after which a SCHEDULER_TASKS entry that no running worker declares any more is deleted "
               "with its state (longer than a rolling deploy).", commands=("worker",)),
    ]


@hookimpl
def mrq_configure(config: Any) -> None:
    interval = config.get("scheduler_interval")
    if interval is not None and not float(interval) > 0:
        raise ConfigError(f"--scheduler_interval must be > 0 seconds, not {interval!r}.")
    ttl = config.get("scheduler_orphan_ttl")
    shortest = min_orphan_ttl(float(interval or 1.0))
    if ttl is not None and not float(ttl) >= shortest:
        raise ConfigError(f"--scheduler_orphan_ttl {ttl!r} is too short: it must be at least {shortest:g} s "
                          f"(6 x max(10 s, --scheduler_interval)); give it longer than a rolling deploy "
                          f"(default {ORPHAN_TTL:g} s = 7 days).")
    parse_entries(config.get("scheduler_tasks"), config.get("scheduler_timezone") or "UTC")


@hookimpl
def mrq_worker_services(worker: Any) -> list[Callable[[], Any]]:
    scheduler = Scheduler.from_config(worker.config, log=worker.log)
    SCHEDULERS[worker.id] = scheduler
    worker.log.info("scheduler: %d entr(ies), checked every %g s", len(scheduler.entries), scheduler.interval)

    def scheduler_loop() -> None:
        scheduler.run_forever()

    return [scheduler_loop]


@hookimpl
def mrq_worker_report(worker: Any, report: dict[str, Any]) -> None:
    scheduler = SCHEDULERS.get(worker.id)
    if scheduler is not None:
        report["scheduler"] = scheduler.report()


@hookimpl
def mrq_worker_stop(worker: Any) -> None:
    scheduler = SCHEDULERS.get(worker.id)
    if scheduler is not None:
        scheduler.stop()
