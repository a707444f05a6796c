"""Hostile configuration values, property-based: every option of every type, from the environment, the command
line, the config file and ``setup_context``. Whatever the value, resolving the configuration either gives the
option a usable value of its type, or raises :class:`ConfigError` naming the option and where the value came from.

No server is needed: these tests only resolve configurations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from mrq.config import OPTIONS, Option, get_config
from mrq.exceptions import ConfigError
from mrq.plugins import PluginManager

HOSTILE = settings(max_examples=60, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _all_options() -> list[Option]:
    """The kernel's options and those of the plugins shipped with MRQ (their options are cast the same way)."""
    pm = PluginManager()
    pm.enable(["cleaning", "scheduler", "greentrace", "memtrace", "metrics", "otel"])
    return list(OPTIONS) + pm.plugin_options()


ALL_OPTIONS = _all_options()
FLAG_OPTIONS = [o for o in OPTIONS if not o.positional and o.name not in ("config", "plugins")]

#: Text as the environment and the command line give it: any character but NUL, including the lone surrogates
#: that Python makes of undecodable bytes (os.environ and sys.argv decode with surrogateescape).
OS_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
                  | st.sampled_from(["\udcff", "\udc80"]), max_size=20)
#: Strings that are edge cases of the casts.
TRICKY_TEXTS = [
    "", " ", "0", "-0", "-1", "1e3", "1e400", "-1e400", "nan", "NaN", "inf", "-inf", "9" * 40, "0x10", "1_000",
    "\u0663", "\uff11", " 7 ", "true", "Off", "y", "[1]", "{}", "}x", "a{b}", "%(message)s", "%(", "%(foo)s",
    "%(message)*d", "%%", "a,b c", ",,", "DEBUG", "debug", "sequential", "\udcff",
]
TRICKY = st.sampled_from(TRICKY_TEXTS)
#: Values a config file (Python) or setup_context(**kwargs) can give: any object.
PY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.binary(max_size=5)
    | st.decimals(allow_nan=True) | st.complex_numbers() | st.builds(object) | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) | st.frozensets(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)


def assert_usable(opt: Option, value: Any) -> None:
    """A value that was accepted is of the option's type, in its range, and passes its own checks."""
    if opt.type is bool:
        assert type(value) is bool
    elif opt.type is int:
        assert type(value) is int and 0 <= value < 2**63
    elif opt.type is float:
        assert type(value) is float and math.isfinite(value) and value >= 0
    elif opt.type is str:
        assert type(value) is str
        value.encode("utf-8")
    else:
        assert type(value) is list and all(type(v) is str and v for v in value)
        for v in value:
            v.encode("utf-8")
    if opt.choices is not None:
        assert value in opt.choices
    if opt.check is not None:
        opt.check(value)


def assert_cast(opt: Option, value: Any, source: str) -> Any:
    """The property of every surface: a usable value, or a ConfigError naming the option and the source."""
    try:
        result = opt.cast(value, source)
    except ConfigError as exc:
        message = str(exc)
        assert repr(opt.name) in message and source in message, message
        assert "\n" not in message, message
        return None
    assert_usable(opt, result)
    return result


@settings(HOSTILE, max_examples=400)
@given(opt=st.sampled_from(ALL_OPTIONS), value=PY_VALUE)
def test_any_python_value_of_any_option(opt, value):
    assert_cast(opt, value, "config file mrq-config.py")


@settings(HOSTILE, max_examples=400)
@given(opt=st.sampled_from(ALL_OPTIONS), text=OS_TEXT | TRICKY)
def test_any_text_of_any_option(opt, text):
    assert_cast(opt, text, "environment variable " + opt.env_var)


@pytest.mark.parametrize("opt", ALL_OPTIONS, ids=lambda o: o.name)
def test_every_tricky_text_of_every_option(opt):
    for text in TRICKY_TEXTS:
        assert_cast(opt, text, "the command line")


# -- the real surfaces, end to end: get_config() with the value in the environment, on the command line, in a file

ENV_SETTINGS = settings(HOSTILE, max_examples=150)


@ENV_SETTINGS
@given(opt=st.sampled_from([o for o in OPTIONS if o.name not in ("config", "plugins")]), text=OS_TEXT | TRICKY)
def test_environment_variable(opt, text, tmp_path, monkeypatch, stop_embedded):
    monkeypatch.chdir(tmp_path)
    command = "worker" if "worker" in opt.commands else "run" if "run" in opt.commands else "common"
    try:
        config = get_config(command, argv=[], env={opt.env_var: text}, load_plugins=False)
    except ConfigError as exc:
        assert opt.env_var in str(exc) or opt.name in str(exc), str(exc)
        return
    assert_usable(opt, config[opt.name])


@ENV_SETTINGS
@given(opt=st.sampled_from(FLAG_OPTIONS), text=OS_TEXT | TRICKY)
def test_command_line_flag(opt, text, tmp_path, monkeypatch, stop_embedded):
    monkeypatch.chdir(tmp_path)
    command = "worker" if "worker" in opt.commands else "run" if "run" in opt.commands else "common"
    argv = [f"--{opt.name}" if parse_flag(text) else f"--no-{opt.name}"] if opt.type is bool \
        else [f"--{opt.name}={text}"]
    try:
        config = get_config(command, argv=argv, env={}, load_plugins=False)
    except ConfigError as exc:
        assert f"--{opt.name}" in str(exc), str(exc)
        return
    assert_usable(opt, config[opt.name])


@pytest.fixture
def stop_embedded(tmp_path: Any) -> Iterator[None]:
    """--embedded starts servers under ./.mrq (tmp_path) and leaves them running for later commands: stop them
    once the test's examples are done, not at the end of the run."""
    yield
    from mrq.servers import _live_lock, _live_servers

    with _live_lock:
        servers = [s for s in _live_servers if str(s.data_dir).startswith(str(tmp_path))]
    for server in servers:
        server.cleanup(timeout=5)


def parse_flag(text: str) -> bool:
    return len(text) % 2 == 0


def _literal(value: Any) -> str:
    """Python source of ``value`` for a config file (objects without a literal become a call)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    return "object()" if type(value) is object else repr(value)


@settings(HOSTILE, max_examples=40)
@given(opt=st.sampled_from([o for o in OPTIONS if o.name not in ("config", "plugins")]),
       value=PY_VALUE.filter(lambda v: "object object" not in repr(v) and "Decimal" not in repr(v)))
def test_config_file_value(opt, value, tmp_path, monkeypatch, stop_embedded):
    monkeypatch.chdir(tmp_path)  # EMBEDDED = True starts servers under ./.mrq
    path = tmp_path / "hostile-config.py"
    path.write_text(f"{opt.name.upper()} = {_literal(value)}\n")
    command = "worker" if "worker" in opt.commands else "run" if "run" in opt.commands else "common"
    try:
        config = get_config(command, argv=[], env={}, config_file=str(path), load_plugins=False)
    except ConfigError as exc:
        assert str(path) in str(exc) or opt.name in str(exc), str(exc)
        return
    assert_usable(opt, config[opt.name])


@HOSTILE
@given(prefix=OS_TEXT | TRICKY, queue=OS_TEXT)
@example(prefix="}x", queue="q").via("found by hypothesis: an empty hash tag '{}'")
@example(prefix="", queue="q").via("found by hypothesis: an empty hash tag '{}'")
def test_accepted_redis_prefix_keeps_every_key_in_one_cluster_slot(prefix, queue):
    from mrq.broker import Broker

    try:
        config = get_config("common", argv=None, env={}, extra={"redis_prefix": prefix}, load_plugins=False)
    except ConfigError as exc:
        assert "'redis_prefix'" in str(exc)
        return
    broker = Broker(_unconnected_redis(), config["redis_prefix"])
    slot = key_slot(broker.key("inflight").encode())
    for key in (broker.queue_key(queue), broker.delayed_key(queue), broker.key("n", queue), broker.key("queues")):
        assert key_slot(key.encode("utf-8", "surrogatepass")) == slot, key


def _unconnected_redis() -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=1)  # register_script() does not connect


# -- regression tests: the failing examples hypothesis found ------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("greenlets", float("inf")),       # OverflowError: cannot convert float infinity to integer
    ("greenlets", 10**30),             # gevent's pool: Python int too large to convert to C long
    ("greenlets", "-5"),
    ("default_job_timeout", "nan"),    # a NaN timeout
    ("default_job_ttl", "1e18"),       # timedelta(seconds=1e18): OverflowError when a job is queued
    ("heartbeat_interval", "-1"),
    ("redis_prefix", ""),              # '{}' is an empty hash tag: each key in a slot of its own
    ("redis_prefix", "a}b"),
    ("name", "\udcff"),                # an undecodable byte in the environment: never sent to Redis or MongoDB
    ("queues", ["ok", "\udcff"]),
])
def test_found_by_hypothesis_refused_with_the_option_named(name, value):
    opt = {o.name: o for o in OPTIONS}[name]
    with pytest.raises(ConfigError, match=f"option {name!r} from here"):
        opt.cast(value, "here")


def test_config_file_with_out_of_range_number(tmp_path: Path):
    path = tmp_path / "mrq-config.py"
    path.write_text("GREENLETS = 1e999\n")
    with pytest.raises(ConfigError, match=r"'greenlets' from config file .*inf"):
        get_config("worker", argv=[], env={}, config_file=str(path), load_plugins=False)
