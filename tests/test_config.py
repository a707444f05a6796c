"""``mrq.config.get_config``: defaults, config file, env vars, command line, precedence and errors.

No server is needed here: these tests only resolve configurations (and build clients that do not connect).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mrq.config import OPTIONS, TASK_KEYS, Config, Option, get_config, parse_bool
from mrq.exceptions import ConfigError, ConnectionsError

ROOT = Path(__file__).resolve().parent.parent
OPTION = {o.name: o for o in OPTIONS}


def cfg(*argv: str, command: str = "worker", env: dict[str, str] | None = None, **kwargs):
    """get_config with an explicit (empty by default) environment: os.environ is never read."""
    return get_config(command, argv=list(argv), env=env or {}, **kwargs)


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path, monkeypatch):
    """Run each test in an empty folder, so that no ./mrq-config.py is picked up by accident."""
    monkeypatch.chdir(tmp_path)


def write_file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------------

def test_defaults_of_every_option_and_their_source():
    config = cfg()
    assert isinstance(config, Config)
    for opt in OPTIONS:
        assert config[opt.name] == opt.default or opt.name in ("config", "plugins"), opt.name
        assert config.sources[opt.name] == "default", opt.name
    assert config.greenlets == 1  # keys are attributes too
    assert config["queues"] == ["default"]
    assert config["tasks"] == {}
    assert config["config"] == ""
    assert config["plugins"] == []
    with pytest.raises(AttributeError, match="No config key 'nope'"):
        config.nope  # noqa: B018


def test_list_defaults_are_copies():
    config = cfg()
    config["queues"].append("mutated")
    assert OPTION["queues"].default == ["default"]
    assert cfg()["queues"] == ["default"]


def test_library_mode_without_argv_reads_no_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--greenlets", "9"])
    config = get_config("common", argv=None, env={})
    assert config.sources["redis"] == "default"
    # Every option has a value (settings of other commands too), but sys.argv was not read.
    assert (config.greenlets, config.sources["greenlets"]) == (1, "default")


# ---------------------------------------------------------------------------------------------------
# Config file
# ---------------------------------------------------------------------------------------------------

FILE = """
GREENLETS = 7
REDIS = "redis://filehost:6379/2"
QUEUES = ["high", "low"]
QUIET = True
MY_CUSTOM_KEY = {"a": 1}
SCHEDULER_TASKS = [{"path": "tasks.Add"}]
lower_case_is_ignored = 1
_private = 2
TASKS = {"tests.tasks.general.Add": {"queue": "adds", "timeout": 5}}
"""


def test_config_file_given_with_flag(tmp_path):
    path = write_file(tmp_path / "conf.py", FILE)
    config = cfg("--config", path)
    assert config.greenlets == 7 and config.sources["greenlets"] == "file"
    assert config.redis == "redis://filehost:6379/2"
    assert config.queues == ["high", "low"]
    assert config.quiet is True
    # Unknown upper-case keys are kept, lower-cased, with source "file".
    assert config["my_custom_key"] == {"a": 1}
    assert config.sources["my_custom_key"] == "file"
    assert config["scheduler_tasks"] == [{"path": "tasks.Add"}]
    assert "lower_case_is_ignored" not in config and "_private" not in config
    assert config["tasks"] == {"tests.tasks.general.Add": {"queue": "adds", "timeout": 5}}
    assert config["config"] == path
    assert config.sources["max_jobs"] == "default"


def test_config_file_short_flag_and_env(tmp_path):
    path = write_file(tmp_path / "other.py", "GREENLETS = 3\n")
    assert cfg("-c", path).greenlets == 3
    assert cfg(env={"MRQ_CONFIG": path}).greenlets == 3
    assert get_config("worker", argv=[], env={}, config_file=path).greenlets == 3


def test_config_file_in_current_directory(tmp_path):
    assert cfg()["config"] == ""  # the autouse fixture made the cwd empty
    write_file(tmp_path / "mrq-config.py", "GREENLETS = 4\nNAME = 'from-cwd'\n")
    config = cfg()
    assert config.greenlets == 4
    assert config.name == "from-cwd"
    assert config["config"] == "mrq-config.py"


def test_file_values_are_cast_to_the_option_type(tmp_path):
    path = write_file(tmp_path / "c.py", "GREENLETS = '12'\nMAX_TIME = 3\nQUEUES = 'a, b c'\nQUIET = 'yes'\n")
    config = cfg("-c", path)
    assert config.greenlets == 12
    assert config.max_time == 3.0 and isinstance(config.max_time, float)
    assert config.queues == ["a", "b", "c"]
    assert config.quiet is True


def test_bad_value_in_file_names_option_and_file(tmp_path):
    path = write_file(tmp_path / "c.py", "GREENLETS = 'many'\n")
    with pytest.raises(ConfigError) as info:
        cfg("-c", path)
    message = str(info.value)
    assert "'greenlets'" in message and path in message and "GREENLETS" in message and "'many'" in message


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cfg("--config", str(tmp_path / "nope.py"))
    path = write_file(tmp_path / "broken.py", "GREENLETS = 1/0\n")
    with pytest.raises(ConfigError, match="failed to load: ZeroDivisionError"):
        cfg("--config", path)


# ---------------------------------------------------------------------------------------------------
# Environment variables
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("var", "raw", "key", "expected"), [
    ("MRQ_GREENLETS", "12", "greenlets", 12),
    ("MRQ_MAX_LATENCY", "0.25", "max_latency", 0.25),
    ("MRQ_DEFAULT_JOB_TIMEOUT", "30", "default_job_timeout", 30.0),
    ("MRQ_QUIET", "true", "quiet", True),
    ("MRQ_QUIET", "1", "quiet", True),
    ("MRQ_QUIET", "off", "quiet", False),
    ("MRQ_QUIET", "No", "quiet", False),
    ("MRQ_QUEUES", "high,low", "queues", ["high", "low"]),
    ("MRQ_QUEUES", "high low  ", "queues", ["high", "low"]),
    ("MRQ_TASK_BLACKLIST", "a.B, c.D", "task_blacklist", ["a.B", "c.D"]),
    ("MRQ_REDIS", "redis://envhost:1/3", "redis", "redis://envhost:1/3"),
    ("MRQ_DEQUEUE_STRATEGY", "burst", "dequeue_strategy", "burst"),
])
def test_env_vars_are_cast(var, raw, key, expected):
    config = cfg(env={var: raw})
    assert config[key] == expected
    assert type(config[key]) is type(expected)
    assert config.sources[key] == "env"


def test_empty_env_var_is_ignored():
    config = cfg(env={"MRQ_GREENLETS": ""})
    assert config.greenlets == 1 and config.sources["greenlets"] == "default"


def test_unrelated_env_vars_are_ignored():
    config = cfg(env={"MRQ_NOT_AN_OPTION": "x", "GREENLETS": "5"})
    assert "not_an_option" not in config and config.greenlets == 1


def test_get_config_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("MRQ_GREENLETS", "6")
    assert get_config("worker", argv=[]).greenlets == 6


@pytest.mark.parametrize(("var", "raw", "option"), [
    ("MRQ_GREENLETS", "abc", "greenlets"),
    ("MRQ_MAX_TIME", "soon", "max_time"),
    ("MRQ_QUIET", "maybe", "quiet"),
])
def test_bad_env_value_names_option_and_variable(var, raw, option):
    with pytest.raises(ConfigError) as info:
        cfg(env={var: raw})
    message = str(info.value)
    assert f"'{option}'" in message
    assert f"environment variable {var}" in message
    assert repr(raw) in message


def test_parse_bool():
    for value in (True, "1", "TRUE", " yes ", "on", "y"):
        assert parse_bool(value) is True
    for value in (False, "0", "false", "No", "off", "n", ""):
        assert parse_bool(value) is False
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("perhaps")


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

def test_command_line_values_are_cast():
    config = cfg("--greenlets", "5", "--max_time", "2.5", "--task_whitelist", "a.B,c.D", "--name", "w1",
                 "q1", "q2")
    assert (config.greenlets, config.max_time, config.name) == (5, 2.5, "w1")
    assert config.task_whitelist == ["a.B", "c.D"]
    assert config.queues == ["q1", "q2"]
    assert config.sources["queues"] == "cli"
    assert config.sources["greenlets"] == "cli"


def test_aliases():
    assert cfg("--mongodb", "mongodb://h:1/db").mongodb_jobs == "mongodb://h:1/db"
    assert cfg("--mongodb", "mongodb://h:1/db").sources["mongodb_jobs"] == "cli"
    assert cfg("--mongodb_jobs", "mongodb://h:2/db").mongodb_jobs == "mongodb://h:2/db"
    assert cfg("-g", "3").greenlets == 3
    assert cfg("--gevent", "4").greenlets == 4
    assert cfg("-p", "0").processes == 0


def test_bool_flags():
    assert cfg("--quiet").quiet is True
    assert cfg("--no-quiet").quiet is False
    assert cfg("--no-quiet", env={"MRQ_QUIET": "1"}).quiet is False
    assert cfg("--no-quiet", env={"MRQ_QUIET": "1"}).sources["quiet"] == "cli"
    assert cfg(env={"MRQ_QUIET": "1"}).quiet is True


def test_bad_command_line_value_names_option_and_flag():
    with pytest.raises(ConfigError) as info:
        cfg("--greenlets", "lots")
    assert "'greenlets'" in str(info.value) and "command line --greenlets" in str(info.value)


def test_choices():
    assert cfg("--dequeue_strategy", "parallel").dequeue_strategy == "parallel"
    with pytest.raises(ConfigError) as info:
        cfg("--dequeue_strategy", "nope")
    message = str(info.value)
    assert "'dequeue_strategy'" in message and "'nope'" in message
    assert "sequential, parallel, burst" in message
    with pytest.raises(ConfigError, match="environment variable MRQ_LOG_LEVEL"):
        cfg(env={"MRQ_LOG_LEVEL": "LOUD"})


def test_worker_options_are_not_flags_of_other_commands():
    with pytest.raises(SystemExit):
        cfg("--greenlets", "3", command="run")
    config = cfg("tests.tasks.general.Add", '{"a": 1}', "--async", command="run")
    assert config.taskpath == "tests.tasks.general.Add"
    assert config.taskargs == ['{"a": 1}']
    assert config["async"] is True


def test_version_and_list_plugins_flags_are_recorded():
    assert cfg("--version")["_flags"] == {"version": True}
    assert cfg("--list-plugins")["_flags"] == {"list_plugins": True}
    assert cfg()["_flags"] == {}
    assert cfg()["_command"] == "worker"


# ---------------------------------------------------------------------------------------------------
# Precedence: command line > env > file > default
# ---------------------------------------------------------------------------------------------------

def test_precedence(tmp_path):
    path = write_file(tmp_path / "c.py", "GREENLETS = 2\nMAX_JOBS = 20\nMAX_TIME = 200\nNAME = 'file'\n")
    config = cfg("-c", path, "--greenlets", "4", env={"MRQ_GREENLETS": "3", "MRQ_MAX_JOBS": "30"})
    assert (config.greenlets, config.sources["greenlets"]) == (4, "cli")
    assert (config.max_jobs, config.sources["max_jobs"]) == (30, "env")
    assert (config.max_time, config.sources["max_time"]) == (200.0, "file")
    assert (config.max_memory, config.sources["max_memory"]) == (0, "default")
    assert config.sources["name"] == "file"


def test_flag_given_with_its_default_value_still_overrides(tmp_path):
    path = write_file(tmp_path / "c.py", "GREENLETS = 5\nQUIET = True\nMAX_JOBS = 9\n")
    config = cfg("-c", path, "--greenlets", "1", "--no-quiet", "--max_jobs", "0",
                 env={"MRQ_MAX_JOBS": "8"})
    assert (config.greenlets, config.sources["greenlets"]) == (1, "cli")
    assert (config.quiet, config.sources["quiet"]) == (False, "cli")
    assert (config.max_jobs, config.sources["max_jobs"]) == (0, "cli")


def test_env_with_default_value_overrides_file(tmp_path):
    path = write_file(tmp_path / "c.py", "GREENLETS = 5\n")
    config = cfg("-c", path, env={"MRQ_GREENLETS": "1"})
    assert (config.greenlets, config.sources["greenlets"]) == (1, "env")


def test_extra_overrides_everything(tmp_path):
    path = write_file(tmp_path / "c.py", "GREENLETS = 5\n")
    config = cfg("-c", path, "--greenlets", "4", env={"MRQ_GREENLETS": "3"},
                 extra={"greenlets": "2", "anything": [1]})
    assert (config.greenlets, config.sources["greenlets"]) == (2, "extra")
    assert config["anything"] == [1]


# ---------------------------------------------------------------------------------------------------
# TASKS
# ---------------------------------------------------------------------------------------------------

def test_tasks_valid_keys(tmp_path):
    tasks = {f"t.T{i}": {key: 1} for i, key in enumerate(sorted(TASK_KEYS))}
    path = write_file(tmp_path / "c.py", f"TASKS = {tasks!r}\n")
    assert cfg("-c", path)["tasks"] == tasks


def test_tasks_unknown_key_lists_known_keys(tmp_path):
    path = write_file(tmp_path / "c.py", "TASKS = {'t.Add': {'queue': 'q', 'timout': 5}}\n")
    with pytest.raises(ConfigError) as info:
        cfg("-c", path)
    message = str(info.value)
    assert "TASKS['t.Add']" in message and "'timout'" in message
    for key in TASK_KEYS:
        assert f"'{key}'" in message


@pytest.mark.parametrize(("text", "match"), [
    ("TASKS = ['t.Add']", "TASKS must be a dict"),
    ("TASKS = {'t.Add': 5}", r"TASKS\['t.Add'\] must be a dict"),
])
def test_tasks_wrong_shapes(tmp_path, text, match):
    path = write_file(tmp_path / "c.py", text + "\n")
    with pytest.raises(ConfigError, match=match):
        cfg("-c", path)


# ---------------------------------------------------------------------------------------------------
# Connections: malformed URIs are clear errors (no server is contacted)
# ---------------------------------------------------------------------------------------------------

def test_malformed_redis_uri():
    from mrq.connections import Connections

    conns = Connections()
    conns.configure(cfg("--redis", "http://x"))
    with pytest.raises(ConnectionsError) as info:
        conns.redis  # noqa: B018
    assert "--redis 'http://x'" in str(info.value) and "redis://" in str(info.value)


def test_malformed_mongodb_uri():
    from mrq.connections import Connections

    conns = Connections()
    conns.configure(cfg("--mongodb_jobs", "notauri"))
    with pytest.raises(ConnectionsError) as info:
        conns.mongodb_jobs  # noqa: B018
    assert "--mongodb_jobs 'notauri'" in str(info.value) and "mongodb://" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# The real command line
# ---------------------------------------------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MRQ_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=60)


def test_cli_version():
    from mrq.version import __version__

    proc = run_cli("worker", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"MRQ {__version__} (Python ")


def test_cli_bad_env_value_exits_2():
    proc = run_cli("worker", env={"MRQ_GREENLETS": "abc"})
    assert proc.returncode == 2
    assert proc.stderr.startswith("mrq-worker: error: Bad value for option 'greenlets'")
    assert "MRQ_GREENLETS" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_bad_choice_and_unknown_flag_exit_2():
    proc = run_cli("worker", "--dequeue_strategy", "nope")
    assert proc.returncode == 2
    assert "dequeue_strategy" in proc.stderr and "sequential, parallel, burst" in proc.stderr
    proc = run_cli("worker", "--no-such-flag")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--redis", "http://x", ["--redis 'http://x'", "Redis URI"]),
    ("--mongodb_jobs", "notauri", ["--mongodb_jobs 'notauri'", "MongoDB URI"]),
])
def test_cli_malformed_uri_exits_2(flag, value, words):
    proc = run_cli("worker", flag, value)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mrq-worker: error:"), proc.stderr
    for word in words:
        assert word in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------
# Docs
# ---------------------------------------------------------------------------------------------------

def test_every_option_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [o.name for o in OPTIONS if not re.search(rf"`{re.escape(o.name)}`", text)]
    assert not missing, f"options missing from docs/configuration.md: {missing}"
    missing = [k for k in TASK_KEYS if f"`{k}`" not in text]
    assert not missing, f"TASKS keys missing from docs/configuration.md: {missing}"


def test_documented_table_matches_option_table():
    """Each option's row in docs/configuration.md shows its env var and its default."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_]+)` \|.*$", text, re.MULTILINE)}
    for opt in OPTIONS:
        row = rows.get(opt.name)
        assert row is not None, opt.name
        if not opt.positional:
            assert f"`{opt.env_var}`" in row, opt.name
        assert f"`{opt.default!r}`" in row, opt.name


def test_option_is_a_frozen_dataclass():
    opt = Option("x", int, 1, "help")
    assert opt.env_var == "MRQ_X"
    with pytest.raises(AttributeError):
        opt.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["report_interval", "flush_interval", "heartbeat_interval", "heartbeat_ttl",
                                  "max_latency"])
def test_intervals_of_zero_are_refused(name):
    """0 would make a busy loop (or, for the TTL, a worker always dead): refused with the minimum to use."""
    with pytest.raises(ConfigError, match=f"'{name}'.*use (at least|a value from)"):
        cfg(f"--{name}", "0")
