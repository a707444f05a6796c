"""The ``cleaning`` plugin: its options, its service inside every worker that enables it, its report.

Enable it with ``--plugins cleaning`` (or ``MRQ_PLUGINS=cleaning``, ``PLUGINS = ["cleaning"]``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
from mrq.config import Option
from mrq.exceptions import ConfigError
from mrq.hookspecs import hookimpl

#: What this process's cleaning service did (reported as ``report["cleaning"]``).
COUNTERS: Counter[str] = Counter()


@hookimpl
def mrq_add_options() -> list[Option]:
    w = ("worker",)
    return [
        Option("cleaning_dead_interval", float, 5.0,
               "Seconds between checks for jobs in flight on dead workers (0 = never).", commands=w),
        Option("cleaning_lost_interval", float, 30.0,
               "Seconds between checks for queued/retry/interrupt/started jobs of which Redis has no trace "
               "(0 = never).", commands=w),
        Option("cleaning_started_interval", float, 300.0,
               "Seconds between checks for started jobs older than their timeout plus the margin (0 = never).",
               commands=w),
        Option("cleaning_grace", float, 10.0,
               "A job must be this many seconds old (since its last update) before it counts as lost.",
               commands=w),
        Option("cleaning_timeout_margin", float, 300.0,
               "Seconds beyond its timeout before a started job not running on a live worker is requeued.",
               commands=w),
        Option("cleaning_max_scan", int, 100_000, "Job documents checked per status and pass, at most.",
               commands=w),
        Option("cleaning_rebuild", bool, True,
               "Rebuild the Redis queues from MongoDB when Redis lost its data.", commands=w),
    ]


@hookimpl
def mrq_configure(config: Any) -> None:
    for name in ("cleaning_dead_interval", "cleaning_lost_interval", "cleaning_started_interval", "cleaning_grace",
                 "cleaning_timeout_margin", "cleaning_max_scan"):
        value = config.get(name)
        if value is not None and value < 0:
            raise ConfigError(f"Option {name} is {value}: use a value >= 0 (0 disables an interval's pass).")


def _tick(interval: float) -> float:
    return max(0.05, min(1.0, interval / 2))


def make_services(worker: Any) -> list[Callable[[], None]]:
    """One greenlet per pass, so that a pass waiting on MongoDB (the lost and started passes query it) never
    delays another: the dead-worker pass needs only Redis to requeue, and must go on during a MongoDB outage."""
    from mrq_cleaning.core import Cleaner

    cleaner = Cleaner(worker.config, worker.log, COUNTERS)
    c = worker.config
    passes = [("dead", cleaner.requeue_dead_workers, float(c.get("cleaning_dead_interval", 5.0))),
              ("lost", cleaner.lost_pass, float(c.get("cleaning_lost_interval", 30.0))),
              ("started", cleaner.started_pass, float(c.get("cleaning_started_interval", 300.0)))]

    def loop(name: str, step: Callable[[], Any], tick: float) -> Callable[[], None]:
        def service() -> None:
            while True:
                try:
                    step()
                except gevent.GreenletExit:
                    raise
                except Exception as exc:  # noqa: BLE001 - Redis or MongoDB down: try again later
                    COUNTERS["errors"] += 1
                    worker.log.warning("cleaning: %s pass failed (%s: %s); retrying", name, type(exc).__name__, exc)
                    gevent.sleep(1)
                gevent.sleep(tick)

        service.__name__ = f"cleaning_{name}"
        return service

    return [loop(name, lambda n=name, f=func, i=interval: cleaner.run_locked(n, f, i), _tick(interval))
            for name, func, interval in passes if interval > 0]


@hookimpl
def mrq_redis_data_lost(worker: Any) -> None:
    """Redis lost MRQ's data (or this is its first worker): rebuild the queues from MongoDB."""
    from mrq_cleaning.core import Cleaner

    if not bool(worker.config.get("cleaning_rebuild", True)):
        return
    cleaner = Cleaner(worker.config, worker.log, COUNTERS)
    new_redis = bool(getattr(worker, "redis_is_new", False))
    while True:  # in its own greenlet: retried until MongoDB and Redis answer (the lost pass would catch up too)
        try:
            cleaner.run_locked("rebuild", lambda: cleaner.rebuild(new_redis=new_redis))
            return
        except gevent.GreenletExit:
            raise
        except Exception as exc:  # noqa: BLE001
            COUNTERS["errors"] += 1
            worker.log.warning("cleaning: rebuild failed (%s: %s); retrying in 5 s", type(exc).__name__, exc)
            gevent.sleep(5)


@hookimpl
def mrq_worker_services(worker: Any) -> list[Callable[[], Any]]:
    return make_services(worker)


@hookimpl
def mrq_worker_report(worker: Any, report: dict[str, Any]) -> None:
    report["cleaning"] = {"requeued": 0, "dead_worker": 0, "errors": 0} | dict(COUNTERS)
