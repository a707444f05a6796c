"""Standard 5-field cron expressions and their next fire time (pure functions, no I/O).

``minute hour day-of-month month day-of-week``, each field a comma-separated list of ``*``, ``N``,
``A-B``, with an optional ``/STEP`` (``*/15``, ``1-30/2``, ``5/10`` = ``5-59/10``). Months and weekdays
also take English names (``jan``..``dec``, ``sun``..``sat``, case-insensitive); weekday 0 and 7 are
Sunday. Macros: ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``),
``@hourly``.

Day rule (as Vixie cron): when both day-of-month and day-of-week are restricted (their text does not
start with ``*``), a day matches if **either** matches (``0 0 13 * fri`` = every 13th and every
Friday); otherwise both must match.

Times are wall-clock times of a time zone (:class:`zoneinfo.ZoneInfo`). Across DST changes: a wall
time that does not exist (spring forward) fires once, shifted by the gap (02:30 -> 03:30); a wall time
that occurs twice (fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

__all__ = ["CronError", "CronSpec", "parse_cron", "next_fire", "zone", "UTC"]

UTC = dt.UTC

MONTHS = {name: i for i, name in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}
WEEKDAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
#: (name, lowest, highest, names) of the five fields.
FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, MONTHS),
    ("day-of-week", 0, 7, WEEKDAYS),
)
#: How far ahead :func:`next_fire` looks before concluding that a spec never fires (a leap day needs
#: up to 8 years; parsing checks that a spec fires within this horizon).
HORIZON_YEARS = 30


class CronError(ValueError):
    """A cron expression that cannot be parsed; the message names the field and the problem."""


@dataclass(frozen=True)
class CronSpec:
    """The sets of values at which a schedule fires, in wall-clock time.

    ``weekdays`` uses 0 = Sunday .. 6 = Saturday. ``day_restricted``/``weekday_restricted`` select the
    day rule (see the module docstring). ``seconds`` is ``(0,)`` for cron strings; daily times may
    have another second.
    """

    seconds: tuple[int, ...]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_restricted: bool = False
    weekday_restricted: bool = False

    def day_matches(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return dom or dow
        return dom and dow


def _value(token: str, field: str, low: int, high: int, names: dict[str, int] | None) -> int:
    if token.isdigit():
        value = int(token)
    elif names is not None and token.lower() in names:
        value = names[token.lower()]
    else:
        expected = "a number" + (f" or a name ({', '.join(names)})" if names else "")
        raise CronError(f"{field} field: {token!r} is not {expected}")
    if not low <= value <= high:
        raise CronError(f"{field} field: {value} is out of range {low}-{high}")
    return value


def _parse_field(text: str, field: str, low: int, high: int, names: dict[str, int] | None) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{field} field {text!r}: empty item in the list")
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field} field: step {step_text!r} in {item!r} must be a positive number")
            step = int(step_text)
        if span == "*":
            first, last = low, (6 if field == "day-of-week" else high)
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _value(a, field, low, high, names), _value(b, field, low, high, names)
            if first > last:
                raise CronError(f"{field} field: range {item!r} goes backwards"
                                + (" (Sunday is 0 or 7)" if field == "day-of-week" else ""))
        else:
            first = _value(span, field, low, high, names)
            last = high if slash else first
        values.update(range(first, last + 1, step))
    return values


def parse_cron(expression: str) -> CronSpec:
    """Parse a 5-field cron expression (or a macro such as ``@daily``); raise :class:`CronError`."""
    if not isinstance(expression, str):
        raise CronError(f"expected a string like '*/5 * * * *', not {type(expression).__name__}")
    text = MACROS.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) != 5:
        raise CronError(f"{expression!r} has {len(parts)} field(s); expected 5: minute hour day-of-month "
                        "month day-of-week (e.g. '30 9 * * mon-fri')")
    sets = [_parse_field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)]
    weekdays = {d % 7 for d in sets[4]}
    spec = CronSpec(seconds=(0,), minutes=frozenset(sets[0]), hours=frozenset(sets[1]),
                    days=frozenset(sets[2]), months=frozenset(sets[3]), weekdays=frozenset(weekdays),
                    day_restricted=not parts[2].startswith("*"), weekday_restricted=not parts[4].startswith("*"))
    if next_fire(spec, dt.datetime(2000, 1, 1, tzinfo=UTC), UTC) is None:
        raise CronError(f"{expression!r} never fires (no such day: check day-of-month against month)")
    return spec


def _next_month(t: dt.datetime) -> dt.datetime:
    return dt.datetime(t.year + 1, 1, 1) if t.month == 12 else dt.datetime(t.year, t.month + 1, 1)


def next_fire(spec: CronSpec, after: dt.datetime, tz: dt.tzinfo = UTC) -> dt.datetime | None:
    """The first time strictly after ``after`` (an aware datetime) at which ``spec`` fires in ``tz``.

    Returns an aware UTC datetime, or ``None`` if the spec never fires within :data:`HORIZON_YEARS`.
    """
    if after.tzinfo is None:
        raise ValueError("after must be an aware datetime")
    after_utc = after.astimezone(UTC)
    t = after_utc.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)  # wall clock, this minute
    end = t + dt.timedelta(days=366 * HORIZON_YEARS)
    seconds = sorted(spec.seconds)
    while t < end:
        if t.month not in spec.months:
            t = _next_month(t)
        elif not spec.day_matches(t.date()):
            t = dt.datetime(t.year, t.month, t.day) + dt.timedelta(days=1)
        elif t.hour not in spec.hours:
            t = t.replace(minute=0) + dt.timedelta(hours=1)
        elif t.minute not in spec.minutes:
            t += dt.timedelta(minutes=1)
        else:
            for second in seconds:
                # fold=0: a repeated wall time is its first occurrence; a missing one maps past the gap
                candidate = t.replace(second=second, tzinfo=tz).astimezone(UTC)
                if candidate > after_utc:
                    return candidate
            t += dt.timedelta(minutes=1)
    return None


def zone(name: str) -> ZoneInfo:
    """``ZoneInfo(name)``; raises :class:`CronError` for an unknown name."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise CronError(f"unknown timezone {name!r} ({type(exc).__name__}); use an IANA name such as "
                        "'UTC' or 'Europe/Paris'") from None
