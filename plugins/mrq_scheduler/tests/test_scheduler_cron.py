"""Pure next-fire-time functions: cron parsing and evaluation, dailytime/weekday/monthday, intervals, DST."""

from __future__ import annotations

import datetime as dt

import pytest
from mrq_scheduler.cron import CronError, next_fire, parse_cron, zone
from mrq_scheduler.entries import parse_entries


def at(text: str, tz: str = "UTC") -> dt.datetime:
    """'2024-01-01 08:00:00' in ``tz`` -> aware datetime."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone(tz))


def fires(expr: str, start: str, n: int = 5, tz: str = "UTC") -> list[str]:
    """The next ``n`` fire times of ``expr`` after ``start``, as wall times of ``tz``."""
    spec, t, out = parse_cron(expr), at(start, tz), []
    for _ in range(n):
        t = next_fire(spec, t, zone(tz))
        out.append(t.astimezone(zone(tz)).strftime("%Y-%m-%d %H:%M %a"))
    return out


def entry(**raw):
    return parse_entries([{"path": "tasks.T", **raw}])[0]


# ------------------------------------------------------------------ cron fields
def test_every_minute_and_strictly_after():
    assert fires("* * * * *", "2024-01-01 08:00:00", 2) == ["2024-01-01 08:01 Mon", "2024-01-01 08:02 Mon"]
    assert fires("* * * * *", "2024-01-01 08:00:30", 1) == ["2024-01-01 08:01 Mon"]
    assert fires("* * * * *", "2024-01-01 07:59:59.999", 1) == ["2024-01-01 08:00 Mon"]


def test_lists_ranges_steps():
    assert fires("*/15 * * * *", "2024-01-01 08:01:00", 4) == [
        "2024-01-01 08:15 Mon", "2024-01-01 08:30 Mon", "2024-01-01 08:45 Mon", "2024-01-01 09:00 Mon"]
    assert fires("5,10-12 9 * * *", "2024-01-01 00:00:00", 5) == [
        "2024-01-01 09:05 Mon", "2024-01-01 09:10 Mon", "2024-01-01 09:11 Mon", "2024-01-01 09:12 Mon",
        "2024-01-02 09:05 Tue"]
    assert fires("0 8-18/5 * * *", "2024-01-01 00:00:00", 4) == [
        "2024-01-01 08:00 Mon", "2024-01-01 13:00 Mon", "2024-01-01 18:00 Mon", "2024-01-02 08:00 Tue"]
    assert fires("50/5 0 * * *", "2024-01-01 00:00:00", 3) == [
        "2024-01-01 00:50 Mon", "2024-01-01 00:55 Mon", "2024-01-02 00:50 Tue"]


def test_names_and_sunday_as_7():
    assert fires("30 9 * * mon-fri", "2024-01-05 10:00:00", 2) == ["2024-01-08 09:30 Mon", "2024-01-09 09:30 Tue"]
    assert fires("0 0 * * 7", "2024-01-01 00:00:00", 1) == fires("0 0 * * SUN", "2024-01-01 00:00:00", 1) \
        == ["2024-01-07 00:00 Sun"]
    assert fires("0 0 * * 5-7", "2024-01-01 00:00:00", 3) == [
        "2024-01-05 00:00 Fri", "2024-01-06 00:00 Sat", "2024-01-07 00:00 Sun"]
    assert fires("0 12 1 jun,Dec *", "2024-01-01 00:00:00", 3) == [
        "2024-06-01 12:00 Sat", "2024-12-01 12:00 Sun", "2025-06-01 12:00 Sun"]


def test_day_of_month_or_day_of_week_rule():
    # both restricted: the 13th OR any Friday
    assert fires("0 0 13 * fri", "2024-09-01 00:00:00", 4) == [
        "2024-09-06 00:00 Fri", "2024-09-13 00:00 Fri", "2024-09-20 00:00 Fri", "2024-09-27 00:00 Fri"]
    assert fires("0 0 13 * fri", "2024-10-01 00:00:00", 3) == [
        "2024-10-04 00:00 Fri", "2024-10-11 00:00 Fri", "2024-10-13 00:00 Sun"]
    # one of them '*' (even '*/2'): both must match, the '*' one matching everything it lists
    assert fires("0 0 13 * *", "2024-10-01 00:00:00", 2) == ["2024-10-13 00:00 Sun", "2024-11-13 00:00 Wed"]
    assert fires("0 0 */10 * mon", "2023-12-31 00:00:00", 2) == ["2024-01-01 00:00 Mon", "2024-03-11 00:00 Mon"]


def test_macros_and_month_ends():
    assert fires("@hourly", "2024-01-01 08:10:00", 1) == ["2024-01-01 09:00 Mon"]
    assert fires("@daily", "2024-01-01 08:10:00", 1) == ["2024-01-02 00:00 Tue"]
    assert fires("@weekly", "2024-01-01 08:10:00", 1) == ["2024-01-07 00:00 Sun"]
    assert fires("@monthly", "2024-12-10 00:00:00", 1) == ["2025-01-01 00:00 Wed"]
    assert fires("@yearly", "2024-12-10 00:00:00", 1) == ["2025-01-01 00:00 Wed"]
    assert fires("0 0 31 * *", "2024-01-31 00:00:00", 3) == [
        "2024-03-31 00:00 Sun", "2024-05-31 00:00 Fri", "2024-07-31 00:00 Wed"]
    assert fires("0 0 29 2 *", "2024-03-01 00:00:00", 2) == ["2028-02-29 00:00 Tue", "2032-02-29 00:00 Sun"]


@pytest.mark.parametrize("expr, message", [
    ("* * * *", "has 4 field(s); expected 5"),
    ("60 * * * *", "minute field: 60 is out of range 0-59"),
    ("* 24 * * *", "hour field: 24 is out of range 0-23"),
    ("* * 0 * *", "day-of-month field: 0 is out of range 1-31"),
    ("* * * 13 *", "month field: 13 is out of range 1-12"),
    ("* * * * 8", "day-of-week field: 8 is out of range 0-7"),
    ("*/0 * * * *", "step '0' in '*/0' must be a positive number"),
    ("5-1 * * * *", "range '5-1' goes backwards"),
    ("* * * * sat-sun", "goes backwards (Sunday is 0 or 7)"),
    ("1,,2 * * * *", "empty item"),
    ("x * * * *", "'x' is not a number"),
    ("* * * foo *", "'foo' is not a number or a name (jan, feb"),
    ("0 0 30 2 *", "never fires"),
    (42, "expected a string"),
])
def test_bad_cron(expr, message):
    with pytest.raises(CronError) as info:
        parse_cron(expr)
    assert message in str(info.value)


# ------------------------------------------------------------------ time zones and DST
def test_timezone_and_dst():
    # 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer
    spec, paris = parse_cron("0 9 * * *"), zone("Europe/Paris")
    assert next_fire(spec, at("2024-01-10 00:00:00"), paris) == at("2024-01-10 08:00:00")
    assert next_fire(spec, at("2024-07-10 00:00:00"), paris) == at("2024-07-10 07:00:00")
    # spring forward (2024-03-31 02:00 -> 03:00 in Paris): 02:30 does not exist and fires once at 03:30
    spec = parse_cron("30 2 * * *")
    t = next_fire(spec, at("2024-03-31 00:00:00", "Europe/Paris"), paris)
    assert t.astimezone(paris).strftime("%m-%d %H:%M") == "03-31 03:30"
    assert next_fire(spec, t, paris).astimezone(paris).strftime("%m-%d %H:%M") == "04-01 02:30"
    # fall back (2024-10-27 03:00 -> 02:00): 02:30 happens twice and fires once, at its first occurrence
    first = next_fire(spec, at("2024-10-27 00:00:00", "Europe/Paris"), paris)
    assert first == at("2024-10-27 00:30:00")   # 02:30 CEST
    assert next_fire(spec, first, paris).astimezone(paris).strftime("%m-%d %H:%M") == "10-28 02:30"
    # every 15 minutes through the fall back: strictly increasing, no duplicate instant
    spec, t, seen = parse_cron("*/15 * * * *"), at("2024-10-27 01:50:00", "Europe/Paris"), []
    for _ in range(8):
        t = next_fire(spec, t, paris)
        seen.append(t)
    assert seen == sorted(set(seen))


# ------------------------------------------------------------------ entries: dailytime, weekday, monthday
def test_dailytime_runs_once_a_day_and_not_immediately_when_passed():
    e = entry(dailytime="09:00")
    assert e.first_run(at("2024-01-01 08:00:00")) == at("2024-01-01 09:00:00")
    assert e.first_run(at("2024-01-01 09:00:01")) == at("2024-01-02 09:00:00")  # passed today: tomorrow
    assert e.next_run(at("2024-01-01 09:00:00")) == at("2024-01-02 09:00:00")
    with_seconds = entry(dailytime=dt.time(23, 59, 30))
    assert with_seconds.next_run(at("2024-12-31 23:59:29")) == at("2024-12-31 23:59:30")
    assert with_seconds.next_run(at("2024-12-31 23:59:30")) == at("2025-01-01 23:59:30")


def test_weekday_and_monthday():
    monday = entry(dailytime="06:00", weekday=0)
    assert monday.first_run(at("2024-01-03 00:00:00")) == at("2024-01-08 06:00:00")  # a Wednesday
    assert entry(dailytime="06:00", weekday="sunday").first_run(at("2024-01-03 00:00:00")) == at("2024-01-07 06:00:00")
    assert entry(dailytime="06:00", weekday="sat").next_run(at("2024-01-06 06:00:00")) == at("2024-01-13 06:00:00")
    first = entry(dailytime="06:00", monthday=1)
    assert first.first_run(at("2024-01-01 07:00:00")) == at("2024-02-01 06:00:00")
    thirty_first = entry(dailytime="06:00", monthday=31)
    assert thirty_first.next_run(at("2024-01-31 06:00:00")) == at("2024-03-31 06:00:00")


def test_dailytime_in_a_timezone():
    e = entry(dailytime="09:00", timezone="America/New_York")
    assert e.next_run(at("2024-01-10 00:00:00")) == at("2024-01-10 14:00:00")
    assert e.next_run(at("2024-07-10 00:00:00")) == at("2024-07-10 13:00:00")


def test_interval_slots_do_not_drift_and_coalesce():
    e = entry(interval=2)
    start = at("2024-01-01 00:00:00")
    assert e.first_run(start) == start
    # checked late (at +0.9 s): the next slot is still start + 2 s, not +2.9 s
    assert e.next_run(start + dt.timedelta(seconds=0.9), previous=start) == start + dt.timedelta(seconds=2)
    # down for 7 s: missed slots 2, 4, 6 collapse into one run now; the next one stays on the grid
    assert e.next_run(start + dt.timedelta(seconds=7), previous=start) == start + dt.timedelta(seconds=8)
    assert e.next_run(start + dt.timedelta(seconds=8), previous=start) == start + dt.timedelta(seconds=10)


def test_hash_is_stable_and_sensitive():
    a = entry(interval=60, params={"b": 1, "a": [1, 2]})
    assert a.hash == entry(interval=60.0, params={"a": [1, 2], "b": 1}).hash
    assert len({a.hash, entry(interval=61, params={"b": 1, "a": [1, 2]}).hash,
                entry(interval=60, params={"b": 2, "a": [1, 2]}).hash,
                entry(interval=60, params={"b": 1, "a": [1, 2]}, queue="q").hash}) == 4
    assert entry(dailytime="09:00").hash == entry(dailytime=dt.time(9, 0)).hash
    assert entry(dailytime="09:00").hash != entry(dailytime="09:00", timezone="Europe/Paris").hash
    assert entry(cron="0 9 * * *").hash == entry(cron=" 0  9 * * * ").hash


def test_hash_of_unnamed_entries_is_that_of_version_1_0_and_a_name_is_part_of_it():
    # mrq-scheduler 1.0 computed these: upgrading keeps the state of every unnamed entry
    assert entry(interval=60, params={"b": 1, "a": [1, 2]}).hash == "023edb261465a3716fd8ca42ff519e0903a60a15"
    assert entry(cron="0 9 * * *", timezone="Europe/Paris").hash == "7f8a1a6913f21c764f26173c6b35c538a74784f5"
    named = entry(interval=60, name="poll")
    assert named.name == "poll" and entry(interval=60).name is None
    assert len({named.hash, entry(interval=60).hash, entry(interval=60, name="poll2").hash}) == 3
