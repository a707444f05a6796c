"""``SCHEDULER_TASKS`` entries: validation, identity hash and next run time (pure functions, no I/O).

An entry is a dict::

    {"path": "tasks.Report", "params": {"kind": "daily"}, "queue": "reports",   # params, queue optional
     "name": "daily-report",                # optional: the same name across configs = versions of one entry
     # exactly one schedule:
     "interval": 60,                        # seconds (int or float > 0)
     "dailytime": "09:30",                  # or datetime.time(9, 30); "HH:MM" or "HH:MM:SS"
         "weekday": 0,                      #   optional with dailytime: 0 = Monday .. 6 (or "mon".."sun")
         "monthday": 1,                     #   optional with dailytime: 1..31 (months without it are skipped)
     "cron": "*/15 8-18 * * mon-fri",       # 5-field cron, see mrq_scheduler.cron
     "timezone": "Europe/Paris"}            # dailytime and cron only; default --scheduler_timezone (UTC)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mrq.exceptions import ConfigError, InvalidParams
from mrq.queue import check_job_queue
from mrq_scheduler.cron import UTC, CronError, CronSpec, next_fire, parse_cron, zone

__all__ = ["Entry", "parse_entries", "KEYS", "WEEKDAY_NAMES"]

KEYS = ("name", "path", "params", "queue", "interval", "dailytime", "weekday", "monthday", "cron", "timezone")
KINDS = ("interval", "dailytime", "cron")
#: Weekday names accepted by ``weekday`` (0 = Monday, as ``datetime.date.weekday()`` and the original MRQ).
WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ALL_DAYS = frozenset(range(1, 32))
_ALL_MONTHS = frozenset(range(1, 13))
_ALL_WEEKDAYS = frozenset(range(7))


@dataclass(frozen=True)
class Entry:
    """One validated entry of ``SCHEDULER_TASKS``.

    ``schedule`` is the normalised schedule (``{"interval": 2.0}``, ``{"cron": "0 9 * * *"}``,
    ``{"dailytime": "09:00:00", "weekday": 0}``), ``hash`` its identity: a SHA-1 of the sorted JSON of
    name (if any), path, params, queue, schedule and (except for intervals) time zone. The same entry has
    the same hash in every process and every day; changing any of these makes it a new entry. ``name``
    makes definitions with different hashes versions of one entry (see the scheduler).
    """

    index: int
    path: str
    params: dict[str, Any]
    queue: str | None
    schedule: dict[str, Any]
    timezone: str
    hash: str
    interval: float | None = None
    spec: CronSpec | None = field(default=None, repr=False)
    name: str | None = None

    def describe(self) -> str:
        """Human-readable schedule: ``every 2 s``, ``cron '0 9 * * *' (Europe/Paris)``..."""
        if self.interval is not None:
            return f"every {self.interval:g} s"
        kind = " ".join(f"{k} {v}" for k, v in self.schedule.items())
        return f"{kind} ({self.timezone})"

    def first_run(self, now: dt.datetime) -> dt.datetime:
        """When a newly configured entry first runs: now for an interval, else the next fire time after
        ``now`` (a daily time that already passed today waits for tomorrow, as in the original MRQ)."""
        if self.interval is not None:
            return now.astimezone(UTC)
        return self.next_run(now)

    def next_run(self, after: dt.datetime, previous: dt.datetime | None = None) -> dt.datetime:
        """The first run strictly after ``after`` (aware datetimes in, aware UTC out).

        For an interval, runs are ``previous + k * interval`` (no drift, missed slots are coalesced);
        without ``previous``, ``after + interval``. For cron/dailytime, ``previous`` is not needed.
        """
        after = after.astimezone(UTC)
        if self.interval is not None:
            if previous is None:
                return after + dt.timedelta(seconds=self.interval)
            previous = previous.astimezone(UTC)
            if previous > after:
                return previous
            steps = math.floor((after - previous).total_seconds() / self.interval) + 1
            return previous + dt.timedelta(seconds=steps * self.interval)
        assert self.spec is not None
        result = next_fire(self.spec, after, zone(self.timezone))
        assert result is not None, "validated entries always fire"
        return result


def _err(index: int, raw: Any, problem: str) -> ConfigError:
    path = raw.get("path") if isinstance(raw, Mapping) else None
    where = f"SCHEDULER_TASKS[{index}]" + (f" ({path!r})" if isinstance(path, str) else "")
    return ConfigError(f"{where}: {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_dailytime(value: Any) -> dt.time:
    """A ``datetime.time`` or ``"HH:MM[:SS]"`` -> ``datetime.time`` (seconds precision); ValueError."""
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            raise ValueError("must be a naive time: give its zone with the 'timezone' key")
        return value.replace(microsecond=0)
    if isinstance(value, str):
        parts = value.strip().split(":")
        if len(parts) in (2, 3) and all(p.isdigit() and len(p) <= 2 for p in parts):
            h, m, s = (int(p) for p in [*parts, "0"][:3])
            if h < 24 and m < 60 and s < 60:
                return dt.time(h, m, s)
    raise ValueError(f"{value!r} is not a time: use 'HH:MM', 'HH:MM:SS' or datetime.time(H, M)")


def _weekday(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 6:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        for i, name in enumerate(WEEKDAY_NAMES):
            if text in (name, name[:3]):
                return i
    raise ValueError(f"weekday {value!r} must be 0 (Monday) .. 6 (Sunday) or a day name such as 'monday'")


def _parse_one(index: int, raw: Any, default_tz: str) -> Entry:
    if not isinstance(raw, Mapping):
        raise _err(index, raw, f"must be a dict with 'path' and a schedule, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(KEYS), key=str)
    if unknown:
        raise _err(index, raw, f"unknown key(s) {unknown}; known keys: {', '.join(KEYS)}")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or name != name.strip()):
        raise _err(index, raw, f"'name' must be a non-empty string without surrounding spaces, not {name!r}")
    path = raw.get("path")
    if not path:
        raise _err(index, raw, "missing 'path' (the task's dotted path, e.g. 'tasks.Report')")
    if not isinstance(path, str) or "." not in path or " " in path:
        raise _err(index, raw, f"'path' {path!r} is not a dotted task path like 'tasks.Report'")
    params = raw.get("params")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise _err(index, raw, f"'params' must be a dict, not {type(params).__name__}")
    try:
        import bson
        bson.encode({"params": params})
        params_json = json.loads(json.dumps(params, sort_keys=True, default=str))
    except (TypeError, ValueError, OverflowError, bson.errors.InvalidDocument) as exc:
        raise _err(index, raw, f"'params' cannot be stored in MongoDB: {exc}")
    queue = raw.get("queue")
    if queue is not None:
        try:
            check_job_queue(queue)
        except InvalidParams as exc:
            raise _err(index, raw, f"'queue': {exc}")

    kinds = [k for k in KINDS if raw.get(k) is not None]
    if not kinds:
        raise _err(index, raw, "no schedule: give one of 'interval' (seconds), 'dailytime' or 'cron'")
    if len(kinds) > 1:
        raise _err(index, raw, f"two schedule kinds ({' and '.join(kinds)}): give only one of them")
    kind = kinds[0]
    for extra in ("weekday", "monthday"):
        if raw.get(extra) is not None and kind != "dailytime":
            raise _err(index, raw, f"'{extra}' needs 'dailytime' (or use a 'cron' expression)")
    if raw.get("weekday") is not None and raw.get("monthday") is not None:
        raise _err(index, raw, "give 'weekday' or 'monthday', not both (a 'cron' expression can say either)")
    timezone = raw.get("timezone")
    if timezone is not None and kind == "interval":
        raise _err(index, raw, "'timezone' applies to 'dailytime' and 'cron' only, not to 'interval'")
    timezone = default_tz if timezone is None else timezone
    if kind != "interval":
        if not isinstance(timezone, str):
            raise _err(index, raw, f"'timezone' must be a name such as 'Europe/Paris', not {timezone!r}")
        try:
            zone(timezone)
        except CronError as exc:
            raise _err(index, raw, str(exc))

    interval: float | None = None
    spec: CronSpec | None = None
    if kind == "interval":
        value = raw["interval"]
        if not _is_number(value) or not value > 0 or math.isinf(value):
            raise _err(index, raw, f"'interval' must be a number of seconds > 0, not {value!r}")
        interval = float(value)
        schedule: dict[str, Any] = {"interval": interval}
    elif kind == "cron":
        try:
            spec = parse_cron(raw["cron"])
        except CronError as exc:
            raise _err(index, raw, f"bad 'cron': {exc}")
        schedule = {"cron": " ".join(raw["cron"].split())}
    else:
        try:
            time = parse_dailytime(raw["dailytime"])
        except ValueError as exc:
            raise _err(index, raw, f"bad 'dailytime': {exc}")
        schedule = {"dailytime": time.isoformat()}
        days, weekdays = _ALL_DAYS, _ALL_WEEKDAYS
        if raw.get("weekday") is not None:
            try:
                weekday = _weekday(raw["weekday"])
            except ValueError as exc:
                raise _err(index, raw, str(exc))
            schedule["weekday"] = weekday
            weekdays = frozenset({(weekday + 1) % 7})  # cron numbering: 0 = Sunday
        if raw.get("monthday") is not None:
            monthday = raw["monthday"]
            if not isinstance(monthday, int) or isinstance(monthday, bool) or not 1 <= monthday <= 31:
                raise _err(index, raw, f"'monthday' must be a day of the month 1..31, not {monthday!r}")
            schedule["monthday"] = monthday
            days = frozenset({monthday})
        spec = CronSpec(seconds=(time.second,), minutes=frozenset({time.minute}), hours=frozenset({time.hour}),
                        days=days, months=_ALL_MONTHS, weekdays=weekdays)

    identity = {"path": path, "params": params_json, "queue": queue, "schedule": schedule}
    if interval is None:
        identity["timezone"] = timezone
    if name is not None:  # only when given: the hashes of unnamed entries stay those of mrq-scheduler 1.0
        identity["name"] = name
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode(), usedforsecurity=False).hexdigest()
    return Entry(index=index, path=path, params=dict(params), queue=queue, schedule=schedule,
                 timezone=timezone if interval is None else "UTC", hash=digest, interval=interval, spec=spec,
                 name=name)


def parse_entries(raw: Any, default_timezone: str = "UTC") -> list[Entry]:
    """Validate ``SCHEDULER_TASKS`` and return its entries; raise ``ConfigError`` naming the entry.

    :param raw: the value of ``SCHEDULER_TASKS`` (``None`` = no entries).
    :param default_timezone: the zone of entries without ``timezone`` (``--scheduler_timezone``).
    """
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"SCHEDULER_TASKS must be a list of dicts, not {type(raw).__name__}.")
    try:
        zone(default_timezone)
    except CronError as exc:
        raise ConfigError(f"--scheduler_timezone: {exc}") from None
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    names: dict[str, int] = {}
    for index, item in enumerate(raw):
        entry = _parse_one(index, item, default_timezone)
        if entry.hash in seen:
            raise _err(index, item, f"duplicate of SCHEDULER_TASKS[{seen[entry.hash]}] (same path, params, "
                       "queue and schedule): it would run twice per period; remove one")
        if entry.name is not None and entry.name in names:
            raise _err(index, item, f"name {entry.name!r} is already the name of SCHEDULER_TASKS["
                       f"{names[entry.name]}]: names must be unique (or remove one of the two)")
        seen[entry.hash] = index
        if entry.name is not None:
            names[entry.name] = index
        entries.append(entry)
    return entries
