"""Hostile input to enqueueing, property-based: queue names, task paths, params, job ids, raw queues and payloads.

Whatever the input, ``queue_job(s)`` / ``queue_raw_jobs`` either store and queue it so that it reads back as given
(the id is in that queue, every Redis key written stays in the ``{prefix}`` hash slot), or raise
:class:`InvalidParams` saying what is wrong, before anything is written. Reading a job by any id gives the job or
:class:`JobNotFound`; loading a task by any path gives the task or :class:`TaskNotFound`.

One MRQ context (test servers) per test; each example checks what it changed, so examples share it.
"""

from __future__ import annotations

import datetime
import decimal
import math
import uuid
from typing import Any

import bson
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from mrq.context import connections, get_broker
from mrq.exceptions import InvalidParams, JobNotFound, TaskNotFound
from mrq.job import MAX_PARAMS_BYTES, Job, job_id_for, queue_job, queue_jobs
from mrq.queue import Queue
from mrq.raw import queue_raw_jobs
from mrq.task import Task, load_task

T = "tests.tasks.general."
HOSTILE = settings(max_examples=60, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                          HealthCheck.data_too_large])

#: Any character, lone surrogates and NUL included.
ANY_CHAR = st.characters(exclude_categories=[]) | st.sampled_from(["\ud800", "\udcff", "\x00", "\u200b", "\u3000"])
QUEUE_NAMES = st.text(ANY_CHAR, max_size=12) | st.sampled_from([
    "", " ", "/", "a/", "/a", "a//b", "{", "}", "{x}", "a{b}c", "}{", "{mrq}", "q" * 5000, "\u00e9t\u00e9", "\u65e5",
    "a b", "a,b", "\t", "a\nb", "a\x00b", "\ud800", "q_raw", "q/x_set", "default", "$x", "a.b", "\u200b",
])


def _state() -> tuple[int, int]:
    """What enqueueing can write: job documents, and Redis keys."""
    return connections.mongodb_jobs["mrq_jobs"].estimated_document_count(), get_broker().redis.dbsize()


def assert_keys_in_one_slot() -> None:
    broker = get_broker()
    slot = key_slot(broker.tag.encode())
    for key in broker.redis.scan_iter(count=1000):
        assert key.startswith(broker.tag.encode() + b":") and key_slot(key) == slot, key


def assert_refused(exc: InvalidParams, *words: str) -> None:
    message = str(exc)
    assert all(w in message for w in words), message
    assert len(message) < 2000, "an error message repeats a huge value"


# -- queue names ----------------------------------------------------------------------------------------------

@HOSTILE
@given(name=QUEUE_NAMES)
@example(name="\ud800").via("found by hypothesis: UnicodeEncodeError from pymongo, after nothing was checked")
@example(name="a\u3000b").via("found by hypothesis: a whitespace that str.split() splits on (MRQ_QUEUES)")
@example(name="a{b}c")
def test_queue_name_round_trips_or_is_refused_before_any_write(mrq_config, name):
    before = _state()
    try:
        job_id = queue_job(T + "Add", {"a": 1, "b": 2}, queue=name)
    except InvalidParams as exc:
        assert_refused(exc, "Queue")
        assert _state() == before
        if "raw queue" not in str(exc):
            with pytest.raises(InvalidParams):
                Queue(name)
        return
    name = name or "default"  # no queue given: the task's
    assert str(job_id) in get_broker().list_ids(name, -1)
    assert Job(job_id).fetch().queue == name and Queue(name).size() >= 1
    assert_keys_in_one_slot()


@HOSTILE
@given(name=QUEUE_NAMES.map(lambda q: q + "_raw") | QUEUE_NAMES.map(lambda q: q + "_sorted_set") | QUEUE_NAMES,
       payloads=st.lists(st.text(ANY_CHAR, max_size=5) | st.integers() | st.floats() | st.binary(max_size=3)
                         | st.none() | st.booleans(), min_size=1, max_size=3))
@example(name="a b_raw", payloads=["x"]).via("found by hypothesis: a raw queue name with a space breaks its "
                                             "in-flight records")
@example(name="q_raw", payloads=["\ud800"]).via("found by hypothesis: UnicodeEncodeError from redis-py")
@example(name="q_raw", payloads=[b"\xff"]).via("found by hypothesis: UnicodeDecodeError")
@example(name="q_sorted_set", payloads=[float("nan")])
def test_raw_queue_name_and_payloads(mrq_config, name, payloads):
    before = _state()
    try:
        if name.endswith("_sorted_set"):
            count = queue_raw_jobs(name, {p: (p if isinstance(p, float) else 1) for p in payloads
                                          if isinstance(p, (str, int, float, bytes))} or {"x": 1})
        else:
            count = queue_raw_jobs(name, payloads)
    except InvalidParams as exc:
        assert_refused(exc)
        assert _state() == before
        return
    assert count >= 1 and sum(get_broker().sizes([name])[name]) >= 1
    assert_keys_in_one_slot()


# -- task paths -----------------------------------------------------------------------------------------------

PATHS = st.text(st.sampled_from(list("ab_.-/ \u00e9\x00") + ["\ud800", "\u0663"]), max_size=8) | st.sampled_from([
    ".x", "x.", "..a.b", "a..b", ".", "tests.tasks.general.", "tests.tasks.general.Nope", "tests.tasks.general.T",
    "tests.tasks.general.Add", "tests.tasks.general.add", "tests.tasks.general.log", "tests.tasks.general.os",
    "tests.tasks.exits_on_import.X", "tests.tasks.raises_on_import.X", "tests..tasks.general.Add",
    "tests.tasks.general.Add.run", "tests.tasks.general.Add\x00",
])


@HOSTILE
@given(path=PATHS)
@example(path=".x").via("found by hypothesis: ValueError 'Empty module name'")
@example(path="..a.b").via("found by hypothesis: TypeError from a relative import")
@example(path="tests.tasks.exits_on_import.X").via("a module calling sys.exit() at import ended the process")
def test_load_any_task_path(path):
    try:
        task = load_task(path)
    except TaskNotFound as exc:
        assert repr(path) in str(exc) or repr(path)[:100] in str(exc), str(exc)
        return
    assert isinstance(task, Task)


@HOSTILE
@given(path=PATHS)
@example(path="\ud800.x").via("found by hypothesis: UnicodeEncodeError from pymongo")
def test_enqueue_any_task_path(mrq_config, path):
    before = _state()
    try:
        job_id = queue_job(path, {})
    except InvalidParams as exc:
        assert_refused(exc, "Task path")
        assert _state() == before
        return
    assert Job(job_id).fetch().path == path


# -- params ---------------------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(2**63 - 2, 2**64 + 2) | st.floats()
           | st.text(ANY_CHAR, max_size=6) | st.binary(max_size=4) | st.datetimes()
           | st.datetimes(timezones=st.timezones()) | st.decimals(allow_nan=True) | st.uuids()
           | st.builds(ObjectId) | st.builds(object) | st.complex_numbers() | st.dates())
KEYS = st.text(ANY_CHAR, max_size=4) | st.sampled_from(["", "$where", "a.b", "_id", "\x00"]) | st.integers() \
    | st.none() | st.tuples(st.integers())
PARAMS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner)
                      | st.frozensets(st.integers(), max_size=2) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=8)


def _bson(value: Any) -> bytes:
    return bson.encode({"params": value})


@HOSTILE
@given(params=st.dictionaries(KEYS, PARAMS, max_size=4) | PARAMS)
@example(params={"a": "\ud800"}).via("found by hypothesis: UnicodeEncodeError instead of InvalidParams")
@example(params={"\ud800": 1}).via("found by hypothesis: UnicodeEncodeError instead of InvalidParams")
@example(params={"n": 2**64}).via("an integer past 64 bits")
@example(params={"x": float("nan"), "y": float("-inf")})
@example(params={"d": decimal.Decimal("1.5")})
@example(params={"u": uuid.UUID(int=1)})
def test_any_params_round_trip_or_are_refused_before_any_write(mrq_config, params):
    before = _state()
    try:
        job_id = queue_job(T + "Add", params)
    except InvalidParams as exc:
        assert_refused(exc, "Params #0", T + "Add")
        assert _state() == before
        return
    stored = Job(job_id).fetch().data["params"]
    assert _bson(stored) == _bson(params)  # NaN-safe equality; tuples read back as lists, aware dates as UTC


def _nested(depth: int) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for _ in range(depth - 1):
        params = {"a": params}
    return params


@pytest.mark.parametrize("depth, accepted", [(90, True), (91, False), (101, False), (10_000, False)])
def test_deep_params(mrq_config, depth, accepted):
    """Found by hypothesis: a RecursionError from bson past ~1000 levels; MongoDB refuses more than 100 levels."""
    if accepted:
        assert Job(queue_job(T + "Add", _nested(depth))).fetch().data["params"] == _nested(depth)
        return
    with pytest.raises(InvalidParams, match="nested more than 90 levels"):
        queue_job(T + "Add", _nested(depth))
    assert _state()[0] == 0


def test_params_past_16_mb_are_refused_at_enqueue(mrq_config):
    """Were a pymongo BulkWriteError (16 MiB + 1 byte), or accepted just under 16 MiB, a document that its status
    write then made too large."""
    for size in (16 * 2**20 + 1, MAX_PARAMS_BYTES + 1):
        with pytest.raises(InvalidParams, match=r"Params #1 of task .* MiB in BSON.*15 MiB"):
            queue_jobs(T + "Add", [{"a": 1}, {"blob": "x" * size}, {"a": 2}])
    assert _state() == (0, 0)
    job_id = queue_job(T + "Add", {"blob": "x" * (MAX_PARAMS_BYTES - 100)})
    assert len(Job(job_id).fetch().data["params"]["blob"]) == MAX_PARAMS_BYTES - 100


def test_params_of_every_non_json_type_are_refused_with_their_type(mrq_config):
    for value in ({1, 2}, decimal.Decimal(1), object(), datetime.date(2020, 1, 1), 1j, math):
        with pytest.raises(InvalidParams, match="cannot be stored in MongoDB"):
            queue_job(T + "Add", {"v": value})
    with pytest.raises(InvalidParams, match="must be a dict"):
        queue_job(T + "Add", [("a", 1)])  # type: ignore[arg-type]
    assert _state() == (0, 0)


# -- job ids --------------------------------------------------------------------------------------------------

JOB_IDS = (st.text(ANY_CHAR, max_size=26) | st.text("0123456789abcdefABCDEF", min_size=24, max_size=24)
           | st.binary(max_size=13) | st.integers() | st.none() | st.builds(ObjectId) | st.floats()
           | st.lists(st.integers(), max_size=2))


@HOSTILE
@given(job_id=JOB_IDS)
def test_reading_a_job_by_any_id(mrq_config, job_id):
    with pytest.raises(JobNotFound):
        Job(job_id).fetch()


@HOSTILE
@given(key=st.text(ANY_CHAR, max_size=10))
@example(key="\ud800").via("found by hypothesis: UnicodeEncodeError")
def test_unique_key_gives_one_stable_id(key):
    if not key:
        with pytest.raises(InvalidParams):
            job_id_for(key)
        return
    assert job_id_for(key) == job_id_for(key) and isinstance(job_id_for(key), ObjectId)


@HOSTILE
@given(job_ids=JOB_IDS | st.lists(JOB_IDS, max_size=3) | st.iterables(JOB_IDS, max_size=2))
@example(job_ids=iter(["0" * 24])).via("found by hypothesis: TypeError 'list_iterator' has no len()")
@example(job_ids=5).via("found by hypothesis: TypeError 'int' has no len()")
def test_queue_jobs_with_any_job_ids(mrq_config, job_ids):
    before = _state()
    try:
        ids = queue_jobs(T + "Add", [{"a": 1, "b": 1}], job_ids=job_ids)
    except InvalidParams as exc:
        assert_refused(exc)
        assert _state() == before
        return
    assert len(ids) == 1 and Job(ids[0]).fetch().status == "queued"


def test_a_module_that_exits_at_import_does_not_end_the_enqueuing_process(mrq_config):
    """Found with hypothesis's task paths: queue_job imports the task to read its settings, and a module calling
    sys.exit() at import ended the process (a web app, a worker)."""
    job_id = queue_job("tests.tasks.exits_on_import.X", {})
    assert Job(job_id).fetch().status == "queued"
    with pytest.raises(TaskNotFound, match=r"raised SystemExit: tests.tasks.exits_on_import exits when imported"):
        load_task("tests.tasks.exits_on_import.X")
