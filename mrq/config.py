"""Configuration: one option table read from the command line, ``MRQ_*`` env vars and ``mrq-config.py``.

Every option is declared once (:class:`Option`: name, type, default, help) and is
readable three ways, with this precedence::

    --flag value  >  MRQ_FLAG=value  >  FLAG = value in mrq-config.py  >  default

Plugins add options of their own through the ``mrq_add_options`` hook.
Upper-case names of the config file that are not options (``TASKS``,
``SCHEDULER_TASKS``, anything a plugin reads) are kept, lower-cased.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mrq import status as st
from mrq.exceptions import ConfigError, InvalidParams

__all__ = ["Option", "Config", "OPTIONS", "TASK_KEYS", "get_config", "parse_bool", "RawQueueSettings", "RAW_QUEUE_KEYS",
           "check_raw_queues"]

COMMON = "common"


def parse_bool(value: Any) -> bool:
    """Read a boolean from a flag, env var or file value ("1", "true", "yes", "on" / "0", "false"...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on", "y"}:
        return True
    if text in {"0", "false", "no", "off", "n", ""}:
        return False
    raise ValueError(f"{value!r} is not a boolean (use true/false, 1/0, yes/no)")


def _parse_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (str, int, float))]
        if bad:
            raise TypeError(f"its items are names, not {type(bad[0]).__name__} {bad[0]!r}")
        return [str(v).strip() for v in value if str(v).strip()]
    return [v for v in str(value).replace(",", " ").split() if v]


_CASTS: dict[type, Callable[[Any], Any]] = {
    bool: parse_bool, int: int, float: float, str: str, list: _parse_list,
}

#: Largest value of a number option: ints fit MongoDB's int64 (and a C long), floats (seconds, mostly) keep
#: ``now + timedelta(seconds=x)`` a valid date. Every number option is >= 0.
_MAX_NUMBER: dict[type, int | float] = {int: 2**63 - 1, float: 1e10}


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be sent to Redis and MongoDB (no lone surrogate from an undecodable byte)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Option:
    """One configuration option.

    :param name: the key (``greenlets``); also ``--greenlets``, ``MRQ_GREENLETS`` and ``GREENLETS``.
    :param type: ``str``, ``int``, ``float``, ``bool`` or ``list`` (comma or space separated).
    :param default: the value when no source sets it.
    :param help: one sentence for ``--help`` and the docs.
    :param commands: the commands that accept it as a flag (``"common"`` = every command).
    :param aliases: other flag names (``--mongodb`` for ``--mongodb_jobs``, ``-g``).
    :param choices: the allowed values, if restricted.
    :param positional: a positional argument of the command (``queues`` of ``mrq-worker``).
    :param check: called with the cast value; raises ``ValueError`` with the reason when it is unusable.
    """

    name: str
    type: type
    default: Any
    help: str
    commands: tuple[str, ...] = (COMMON,)
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    positional: bool = False
    check: Callable[[Any], None] | None = None

    def cast(self, value: Any, source: str) -> Any:
        """Convert ``value`` read from ``source`` to this option's type, or raise ConfigError."""
        try:
            result = _CASTS[self.type](value)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(float("inf")) from a file
            raise ConfigError(
                f"Bad value for option {self.name!r} from {source}: {value!r} is not a valid "
                f"{self.type.__name__} ({exc}). Fix it there, or see `--help` for the expected form."
            ) from None
        if self.type in (int, float) and not 0 <= result <= _MAX_NUMBER[self.type]:  # NaN fails too
            raise ConfigError(
                f"Bad value for option {self.name!r} from {source}: {value!r} is out of range: use a number from 0 "
                f"to {_MAX_NUMBER[self.type]:g}.")
        for text in (result if self.type is list else [result] if self.type is str else []):
            if not _is_utf8(text):
                raise ConfigError(
                    f"Bad value for option {self.name!r} from {source}: {text!r} is not valid UTF-8 text (an "
                    "undecodable byte in the environment or on the command line?). Fix it there.")
        if self.choices is not None and result not in self.choices and isinstance(result, str):
            result = next((c for c in self.choices if str(c).lower() == result.lower()), result)
        if self.choices is not None and result not in self.choices:
            raise ConfigError(
                f"Bad value for option {self.name!r} from {source}: {result!r}; "
                f"choose one of {', '.join(map(str, self.choices))}."
            )
        if self.check is not None:
            try:
                self.check(result)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"Bad value for option {self.name!r} from {source}: {result!r}: {exc}.") from None
        return result

    @property
    def env_var(self) -> str:
        return "MRQ_" + self.name.upper()


def _at_least(minimum: float) -> Callable[[Any], None]:
    """A check refusing values below ``minimum`` (an interval of 0 would be a busy loop)."""
    def check(value: Any) -> None:
        if value < minimum:
            raise ValueError(f"use at least {minimum:g}")
    return check


def _between(low: float, high: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(f"use a value from {low:g} to {high:g}")
    return check


def _check_log_format(value: str) -> None:
    logging.Formatter(value, validate=True)  # ValueError on '%(foo' or a format with no field
    try:
        logging.Formatter(value).format(logging.LogRecord("mrq", logging.INFO, "", 0, "message", None, None))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"it names a field that log records do not have ({exc}); use fields such "
                         "as %(asctime)s, %(levelname)s, %(name)s and %(message)s") from None


def _check_redis_prefix(value: str) -> None:
    # The prefix is the Redis Cluster hash tag of every key ("{prefix}:..."): a brace or an empty prefix would
    # end the tag early or make it empty, and Redis would then hash each whole key to a slot of its own.
    if not value or "{" in value or "}" in value:
        raise ValueError("use a non-empty prefix without '{' or '}' (it is the hash tag of every key MRQ writes)")


OPTIONS: tuple[Option, ...] = (
    # -- connections
    Option("redis", str, "redis://127.0.0.1:6379/0",
           "Redis URI: redis://[:password@]host:port/db, rediss:// for TLS, "
           "redis+sentinel://[:password@]host:port[,host:port]/service/db for Sentinel, "
           "redis+cluster://[:password@]host:port[,host:port] for a Redis Cluster (rediss+cluster:// for TLS)."),
    Option("redis_prefix", str, "mrq", "Prefix (and Cluster hash tag) of every Redis key MRQ writes.",
           check=_check_redis_prefix),
    Option("redis_max_connections", int, 1000, "Size of the Redis connection pool of a process."),
    Option("mongodb_jobs", str, "mongodb://127.0.0.1:27017/mrq",
           "MongoDB URI of the jobs database (the database name comes from the URI path).",
           aliases=("mongodb",)),
    Option("mongodb_logs", str, "1",
           "MongoDB URI for per-job logs; '1' = the jobs database, '0' = do not store logs."),
    Option("mongodb_logs_size", int, 16 * 1024 * 1024,
           "Size in bytes of the capped mrq_logs collection (0 = not capped)."),
    Option("embedded", bool, False,
           "Use (and start if needed) the embedded Redis and MongoDB servers under ./.mrq/."),
    # -- general
    Option("config", str, "", "Path of the config file (default: ./mrq-config.py if it exists).",
           aliases=("c",)),
    Option("plugins", list, [], "Plugins to enable, by entry-point name or dotted module path."),
    Option("name", str, "", "Worker name (default: <hostname>.<pid>)."),
    Option("log_level", str, "INFO", "Log level of the worker and task loggers.",
           choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Option("log_format", str, "%(asctime)s [%(levelname)s] %(message)s",
           "Format of log lines (Python logging %-style: %(asctime)s, %(levelname)s, %(name)s, %(message)s...).",
           check=_check_log_format),
    Option("quiet", bool, False, "Do not print task logs to stderr (they are still stored per job)."),
    # -- jobs
    Option("default_job_timeout", float, 3600.0, "Seconds before a running job is killed as 'timeout'."),
    Option("default_job_max_retries", int, 3, "Retries before a retried job becomes 'maxretries'."),
    Option("default_job_retry_delay", float, 3.0, "Base delay in seconds before a retried job runs again."),
    Option("default_job_retry_backoff", float, 2.0,
           "Multiplier of the retry delay per retry (exponential backoff, with jitter); 1 = constant."),
    Option("default_job_retry_max_delay", float, 3600.0, "Upper bound of a computed retry delay (s)."),
    Option("default_job_ttl", float, 180 * 86400.0,
           "Seconds a job document is kept when it ends neither in success, abort nor cancel."),
    Option("default_job_result_ttl", float, 7 * 86400.0, "Seconds a successful job document is kept."),
    Option("default_job_abort_ttl", float, 86400.0, "Seconds an aborted job document is kept."),
    Option("default_job_cancel_ttl", float, 86400.0, "Seconds a cancelled job document is kept."),
    Option("max_worker_deaths", int, 3,
           "A job running when its worker died this many times (SIGKILL, OOM, segfault, --max_memory) ends as "
           "'maxworkerdeaths' instead of being requeued again (0 = never)."),
    # -- worker
    Option("queues", list, ["default"], "Queues to dequeue from, highest priority first; 'q/' = every "
           "subqueue of q.", commands=("worker",), positional=True),
    Option("greenlets", int, 1, "Jobs run concurrently by one worker process (gevent greenlets).",
           commands=("worker",), aliases=("gevent", "g")),
    Option("processes", int, 0, "Worker processes to run under supervision (0 = this process).",
           commands=("worker",), aliases=("p",)),
    Option("stop_timeout", float, 60.0,
           "With --processes: seconds a graceful stop (SIGINT) lets running jobs finish before they are "
           "interrupted and requeued (SIGTERM); a child still running 120 s later is SIGKILLed.",
           commands=("worker",), check=_at_least(0.0)),
    Option("max_jobs", int, 0, "Stop after this many jobs started (0 = no limit; a job waiting for a "
           "max_concurrency slot is not one).", commands=("worker",)),
    Option("max_time", float, 0.0, "Stop dequeuing after this many seconds (0 = no limit).",
           commands=("worker",)),
    Option("max_memory", int, 0, "Stop gracefully when the process uses more MB than this (0 = no limit).",
           commands=("worker",)),
    Option("report_interval", float, 10.0, "Seconds between worker reports in mrq_workers.",
           commands=("worker",), check=_at_least(0.1)),
    Option("flush_interval", float, 0.2,
           "Seconds between batched writes of job statuses and logs to MongoDB.", commands=("worker",),
           check=_at_least(0.001)),
    Option("heartbeat_interval", float, 1.0,
           "Seconds between worker heartbeats in Redis (also how often kill requests are read).",
           commands=("worker",), check=_at_least(0.01)),
    Option("heartbeat_ttl", float, 10.0, "Seconds after the last heartbeat before a worker counts as dead.",
           commands=("worker",), check=_at_least(0.1)),
    Option("max_latency", float, 1.0,
           "Longest wait (s) of an idle worker's blocking pop; bounds how late delayed jobs start (at most 50: "
           "a Redis reply may take 60 s).", commands=("worker",), check=_between(0.01, 50)),
    Option("dequeue_strategy", str, "sequential",
           "sequential: strict queue priority; parallel: share slots across queues; burst: sequential, "
           "and exit when the queues are empty.", commands=("worker",),
           choices=("sequential", "parallel", "burst")),
    Option("task_whitelist", list, [], "Only run these task paths (others are pushed back).",
           commands=("worker",)),
    Option("task_blacklist", list, [], "Never run these task paths (they are pushed back).",
           commands=("worker",)),
    Option("subqueues_refresh_interval", float, 10.0,
           "Seconds between refreshes of the subqueues matched by 'q/' queues.", commands=("worker",)),
    # -- mrq-run
    Option("taskpath", str, "", "Dotted path of the task (module.Class or module.function).",
           commands=("run",), positional=True),
    Option("taskargs", list, [], "Params: one JSON object, or key value pairs.", commands=("run",),
           positional=True),
    Option("queue", str, "", "Enqueue on this queue instead of running in this process.",
           commands=("run",)),
    Option("async", bool, False, "Enqueue (on the task's queue) instead of running in this process.",
           commands=("run",)),
    Option("wait", bool, False, "With --async/--queue: wait for the job and print its result.",
           commands=("run",)),
    Option("delay", float, 0.0, "With --async/--queue: run the job no earlier than in this many seconds.",
           commands=("run",)),
)

#: Keys accepted in an entry of the ``TASKS`` dict.
TASK_KEYS = frozenset({
    "queue", "timeout", "result_ttl", "abort_ttl", "cancel_ttl", "default_ttl", "max_retries",
    "retry_delay", "retry_backoff", "retry_max_delay", "retry_on", "max_concurrency", "on_max_concurrency",
})


class Config(dict):
    """The resolved configuration: a dict whose keys are also attributes (``config.greenlets``).

    ``config.sources`` maps each option name to where its value came from
    (``default``, ``file``, ``env``, ``cli``, or ``extra`` for ``setup_context(**kwargs)``).
    """

    sources: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"No config key {name!r}") from None


def _options_for(command: str, options: Iterable[Option]) -> list[Option]:
    return [o for o in options if COMMON in o.commands or command in o.commands]


def _build_parser(command: str, options: Sequence[Option], prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, argument_default=argparse.SUPPRESS,
                                     description=f"MRQ {command} command")
    parser.add_argument("--version", action="store_true", help="Print the MRQ version and exit.")
    parser.add_argument("--list-plugins", dest="list_plugins", action="store_true",
                        help="List installed plugins, their versions, state and hooks, and exit.")
    for opt in options:
        if opt.positional:
            parser.add_argument(opt.name, nargs="*" if opt.type is list else "?", help=opt.help.replace("%", "%%"))
            continue
        flags = [f"--{opt.name}"] + [f"-{a}" if len(a) == 1 else f"--{a}" for a in opt.aliases]
        # argparse %-formats help texts: a default such as the log format's '%(asctime)s' must be escaped.
        text = f"{opt.help} [default: {opt.default!r}; env {opt.env_var}]".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": opt.name, "help": text}
        if opt.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        parser.add_argument(*flags, **kwargs)
    return parser


def _read_file(path: str) -> dict[str, Any]:
    try:
        namespace = runpy.run_path(path)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path!r} does not exist (from --config or MRQ_CONFIG).") from None
    except Exception as exc:
        raise ConfigError(f"Config file {path!r} failed to load: {type(exc).__name__}: {exc}") from exc
    return {k.lower(): v for k, v in namespace.items() if k[:1].isupper() and not k.startswith("__")}


def _first(name: str, argv_ns: Mapping[str, Any], env: Mapping[str, str], file_values: Mapping[str, Any]):
    if name in argv_ns:
        return argv_ns[name]
    env_name = "MRQ_" + name.upper()
    if env.get(env_name):
        return env[env_name]
    return file_values.get(name)


_FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", ""})


def _is_set(value: Any) -> bool:
    """Whether an activation flag's value turns its plugin on: anything but a false word or value."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value)


def _flag_in_argv(name: str, argv: Sequence[str]) -> bool | None:
    """``--name`` (with or without a value) -> True, ``--no-name`` or ``--name=0`` -> False, absent -> None.

    A token scan rather than argparse: the flag's type (bool, or one taking a value) is declared by the
    plugin, which is not loaded yet. The last occurrence wins; ``--`` ends the options.
    """
    state = None
    for token in argv:
        if token == "--":
            break
        if token == f"--{name}":
            state = True
        elif token == f"--no-{name}":
            state = False
        elif token.startswith(f"--{name}="):
            state = _is_set(token.split("=", 1)[1])
    return state


def _flag_plugins(argv: Sequence[str], env: Mapping[str, str], file_values: Mapping[str, Any],
                  extra: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """Activation flags of installed plugins (entry-point group ``mrq.plugin_flags``): flag -> (plugin, on).

    A flag is on when set on the command line, else by ``MRQ_<FLAG>``, else by ``<FLAG>`` in the config
    file (``extra`` first of all), to anything but a false word (0, false, no, off, empty).
    """
    from mrq.plugins import installed_plugin_flags

    flags: dict[str, tuple[str, bool]] = {}
    for flag, plugin in installed_plugin_flags().items():
        if flag in extra:
            on = _is_set(extra[flag])
        else:
            state = _flag_in_argv(flag, argv)
            if state is not None:
                on = state
            elif env.get("MRQ_" + flag.upper()):
                on = _is_set(env["MRQ_" + flag.upper()])
            else:
                on = _is_set(file_values.get(flag))
        flags[flag] = (plugin, on)
    return flags


def _check_tasks(tasks: Any) -> dict[str, dict[str, Any]]:
    if tasks is None:
        return {}
    if not isinstance(tasks, Mapping):
        raise ConfigError(f"TASKS must be a dict of task path -> options, not {type(tasks).__name__}.")
    for path, conf in tasks.items():
        if not isinstance(conf, Mapping):
            raise ConfigError(f"TASKS[{path!r}] must be a dict of options, not {type(conf).__name__}.")
        unknown = set(conf) - TASK_KEYS
        if unknown:
            raise ConfigError(f"TASKS[{path!r}] has unknown option(s) {sorted(unknown)}; "
                              f"known options: {sorted(TASK_KEYS)}.")
    return dict(tasks)


#: Keys accepted in an entry of ``RAW_QUEUES`` (the original's ``has_subqueues``, ``notify`` and
#: ``dashboard_graph`` are accepted and have no effect: subqueues and wake-ups are always on).
RAW_QUEUE_KEYS = frozenset({"job_factory", "retry_queue", "statuses_no_storage", "pushback_seconds",
                            "has_subqueues", "notify", "dashboard_graph"})
_STORABLE = frozenset(st.ALL_STATUSES) - {st.QUEUED}


@dataclass(frozen=True)
class RawQueueSettings:
    """The ``RAW_QUEUES`` entry of a raw queue's root."""

    job_factory: Callable[[str], Mapping[str, Any]]
    retry_queue: str = "default"
    statuses_no_storage: frozenset[str] = frozenset()
    pushback_seconds: float = 0.0


def check_raw_queues(raw_queues: Any) -> dict[str, RawQueueSettings]:
    """Validate the ``RAW_QUEUES`` config dict; raise :class:`ConfigError` naming the bad entry and its fix."""
    from mrq.broker import check_job_queue, queue_kind  # late: the broker imports redis

    if raw_queues is None:
        return {}
    if isinstance(raw_queues, Mapping) and all(isinstance(v, RawQueueSettings) for v in raw_queues.values()):
        return dict(raw_queues)
    if not isinstance(raw_queues, Mapping):
        raise ConfigError(f"RAW_QUEUES must be a dict of raw queue name -> settings, not {type(raw_queues).__name__}.")
    out: dict[str, RawQueueSettings] = {}
    for name, conf in raw_queues.items():
        where = f"RAW_QUEUES[{name!r}]"
        if not isinstance(name, str) or "/" in name or queue_kind(name) == "r":
            raise ConfigError(f"{where}: a raw queue's name ends in _raw, _set, _sorted_set or _timed_set (its kind) "
                              "and names the root queue (no '/': subqueues use their root's entry).")
        if not isinstance(conf, Mapping):
            raise ConfigError(f"{where} must be a dict of settings, not {type(conf).__name__}.")
        unknown = set(conf) - RAW_QUEUE_KEYS
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {sorted(unknown)}; known keys: {sorted(RAW_QUEUE_KEYS)}.")
        factory = conf.get("job_factory")
        if not callable(factory):
            raise ConfigError(f"{where} needs a job_factory: a function of the payload (a str) returning "
                              "{'path': 'tasks.X', 'params': {...}}.")
        no_storage = conf.get("statuses_no_storage") or ()
        if isinstance(no_storage, str) or not isinstance(no_storage, Iterable):
            raise ConfigError(f"{where}['statuses_no_storage'] must be a tuple of statuses, e.g. "
                              "('started', 'success').")
        bad = sorted(set(no_storage) - (_STORABLE - {st.RETRY}))
        if bad:
            raise ConfigError(f"{where}['statuses_no_storage'] has {bad}: use statuses among "
                              f"{sorted(_STORABLE - {st.RETRY})} (a retry is always stored: it needs its count).")
        retry_queue = conf.get("retry_queue", "default")
        try:
            check_job_queue(retry_queue)
        except InvalidParams as exc:
            raise ConfigError(f"{where}['retry_queue'] must name a regular queue: {exc}") from None
        try:
            pushback = float(conf.get("pushback_seconds") or 0)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}['pushback_seconds'] must be a number of seconds.") from None
        if pushback < 0 or (pushback and queue_kind(name) != "t"):
            raise ConfigError(f"{where}['pushback_seconds'] applies to *_timed_set queues only, and is >= 0.")
        out[name] = RawQueueSettings(factory, retry_queue, frozenset(no_storage), pushback)
    return out


def get_config(command: str = COMMON, argv: Sequence[str] | None = None,
               env: Mapping[str, str] | None = None, config_file: str | None = None,
               extra: Mapping[str, Any] | None = None, load_plugins: bool = True,
               prog: str | None = None) -> Config:
    """Resolve the configuration of ``command`` (``worker``, ``run`` or ``common``).

    :param argv: command-line arguments (``None`` = no command line, as in a library).
    :param env: environment (default ``os.environ``); ``MRQ_<NAME>`` variables are cast to the option type.
    :param config_file: path of the config file; default ``--config``/``MRQ_CONFIG`` or ``./mrq-config.py``.
    :param extra: values that override every source (tests, ``setup_context(**kwargs)``).
    :param load_plugins: load the enabled plugins (their options join the table).
    :raises ConfigError: on an unknown plugin, a bad value or a broken config file.
    """
    from mrq import plugins as plugin_mod  # late: plugins imports config types

    env = os.environ if env is None else env
    extra = dict(extra or {})

    # Pass 1: the file and the plugin list, which decide what the other options are.
    pre = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    pre.add_argument("--config", "-c", dest="config")
    pre.add_argument("--plugins", dest="plugins")
    pre_ns = vars(pre.parse_known_args(list(argv or []))[0])
    path = extra.get("config") or config_file or _first("config", pre_ns, env, {})
    if not path and os.path.exists("mrq-config.py"):
        path = "mrq-config.py"
    file_values = _read_file(path) if path else {}

    plugin_opt = next(o for o in OPTIONS if o.name == "plugins")
    plugin_names = extra.get("plugins")
    if plugin_names is not None:
        plugin_names = plugin_opt.cast(plugin_names, "extra")  # setup_context(plugins="a,b")
    else:
        raw = _first("plugins", pre_ns, env, file_values)
        plugin_names = plugin_opt.cast(raw, "plugins") if raw is not None else []
    if load_plugins:
        flags = _flag_plugins(list(argv or []), env, file_values, extra)
        plugin_names = plugin_names + list(dict.fromkeys(
            p for p, on in flags.values() if on and p not in plugin_names))
        if argv is not None:  # `--no-flag` of a plugin left disabled: its option does not exist, drop it
            off = {f for f, (p, _) in flags.items() if p not in plugin_names}
            argv = [t for t in argv if not any(t == f"--no-{f}" or t.startswith(f"--{f}=") for f in off)]
    pm = plugin_mod.PluginManager()
    if load_plugins:
        pm.enable(plugin_names)
    options = list(OPTIONS) + pm.plugin_options(taken={o.name for o in OPTIONS})

    # Pass 2: the full command line.
    parser = _build_parser(command, _options_for(command, options), prog)
    ns = vars(parser.parse_args(list(argv))) if argv is not None else {}

    config = Config()
    config.sources = {}
    for key, value in file_values.items():
        config[key] = value
        config.sources[key] = "file"
    known = {o.name: o for o in options}
    for opt in options:
        if opt.name in extra:
            value, tag, source = extra.pop(opt.name), "extra", "extra"
        elif opt.name in ns and ns[opt.name] not in (None, []):
            value, tag, source = ns[opt.name], "cli", f"command line --{opt.name}"
        elif env.get(opt.env_var):
            value, tag, source = env[opt.env_var], "env", f"environment variable {opt.env_var}"
        elif opt.name in file_values:
            value, tag, source = file_values[opt.name], "file", f"config file {path} ({opt.name.upper()})"
        else:
            config[opt.name] = opt.default if not isinstance(opt.default, list) else list(opt.default)
            config.sources[opt.name] = "default"
            continue
        config[opt.name] = opt.cast(value, source)
        config.sources[opt.name] = tag
    config.update(extra)
    config["plugins"] = list(plugin_names)
    config["tasks"] = _check_tasks(config.get("tasks"))
    from mrq.broker import queue_kind  # late: the broker imports redis
    config["raw_queues"] = check_raw_queues(config.get("raw_queues"))
    if command == "worker":
        from mrq.broker import check_queue_name
        from mrq.exceptions import InvalidParams
        for queue in config.get("queues") or []:
            try:
                check_queue_name(queue)
            except InvalidParams as exc:
                raise ConfigError(f"Bad value for option 'queues' ({config.sources.get('queues')}): {exc}") from None
            if queue_kind(queue) != "r" and queue.split("/", 1)[0] not in config["raw_queues"]:
                raise ConfigError(f"Queue {queue!r} is a raw queue (by its name) but RAW_QUEUES has no entry "
                                  f"{queue.split('/', 1)[0]!r}: add one with a job_factory in mrq-config.py.")
    config["config"] = path or ""
    config["_command"] = command
    config["_flags"] = {k: v for k, v in ns.items() if k not in known}
    config.plugin_manager = pm  # type: ignore[attr-defined]
    if config.get("embedded"):
        from mrq.servers import apply_embedded
        apply_embedded(config)
    pm.hook.mrq_configure(config=config)
    return config
