"""Tasks: what a job runs, found by dotted path, and their per-task settings.

A task is either a subclass of :class:`Task` (``run(self, params)``, as in the
original MRQ) or a plain function, called with the params as keyword arguments::

    class Add(Task):
        max_retries = 5
        def run(self, params):
            return params["a"] + params["b"]

    def add(a, b):
        return a + b

Settings come from, in order: the ``TASKS`` config entry of the path, the
class attributes, then the ``default_job_*`` options.
"""

from __future__ import annotations

import importlib
import inspect
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import bson

from mrq.exceptions import ConfigError, InvalidParams, TaskNotFound
from mrq.hookspecs import hookimpl

if TYPE_CHECKING:
    from mrq.job import Job

__all__ = ["Task", "TaskSettings", "load_task", "task_settings", "task_path_problem", "KernelHooks", "MAX_PARAMS_BYTES"]

#: Largest params of a job, in BSON bytes: MongoDB stores at most 16 MiB per document, and the job's document also
#: holds its status fields, result and tracebacks (params and result together must fit in it too).
MAX_PARAMS_BYTES = 15 * 1024 * 1024


class Task:
    """Base class of class-based tasks. Subclass it and implement :meth:`run`.

    Class attributes set per-task defaults (a ``TASKS`` entry overrides them):
    ``queue``, ``timeout``, ``max_retries``, ``retry_delay``, ``retry_backoff``,
    ``retry_on`` (exception classes that trigger an automatic retry),
    ``max_concurrency`` (with ``on_max_concurrency``: ``"wait"``, the default, or ``"fail"``), ``result_ttl``.
    """

    is_main_task = False

    def run(self, params: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.run(self, params) is not implemented")

    def run_wrapped(self, params: dict[str, Any]) -> Any:
        """Override to wrap every run of this task (the original MRQ's extension point)."""
        return self.run(params)


class _FunctionTask(Task):
    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def run(self, params: dict[str, Any]) -> Any:
        return self.func(**params)


_cache: dict[str, tuple[type | None, Callable[[], Task]]] = {}


def task_path_problem(path: Any) -> str | None:
    """Why ``path`` can never name a task (``None`` if it may): not text, no dot, an empty part (``.x``,
    ``a..b``), whitespace or a control character, or text that is not valid UTF-8."""
    if not isinstance(path, str) or "." not in path:
        return f"Task path {path!r:.200} is not a dotted path like 'tasks.Add' (module.Name)"
    if any(not part for part in path.split(".")):
        return f"Task path {path!r:.200} has an empty part: use a dotted path like 'tasks.Add' (module.Name)"
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cs") for c in path):
        return (f"Task path {path!r:.200} has whitespace, a control character or invalid UTF-8: use a dotted path "
                "like 'tasks.Add' (module.Name)")
    return None


def _resolve(path: str) -> tuple[type | None, Callable[[], Task]]:
    problem = task_path_problem(path)
    if problem:
        raise TaskNotFound(problem + ".")
    if path in _cache:
        return _cache[path]
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskNotFound(
            f"Task {path!r} could not be imported: {exc}. Run from the folder that holds "
            f"'{module_name.replace('.', '/')}.py' or add it to PYTHONPATH.") from exc
    except (Exception, SystemExit) as exc:  # the module raised (or called sys.exit()) at import: never end the worker
        raise TaskNotFound(f"Task {path!r} could not be imported: module {module_name!r} raised {type(exc).__name__}: "
                           f"{exc} when imported. Fix that module (see the cause below).") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise TaskNotFound(f"Task {path!r} not found: module {module_name!r} has no {attr!r}.") from None
    if inspect.isclass(obj) and issubclass(obj, Task):
        entry: tuple[type | None, Callable[[], Task]] = (obj, obj)
    elif callable(obj) and not inspect.isclass(obj):
        entry = (None, lambda: _FunctionTask(obj))
    else:
        raise TaskNotFound(f"Task {path!r} is neither a mrq.task.Task subclass nor a function.")
    _cache[path] = entry
    return entry


def load_task(path: str) -> Task:
    """A new instance of the task at ``path``; raises :class:`TaskNotFound` with the reason."""
    return _resolve(path)[1]()


@dataclass(frozen=True)
class TaskSettings:
    """The settings that apply to one task path."""

    queue: str
    timeout: float
    max_retries: int
    retry_delay: float
    retry_backoff: float
    retry_max_delay: float
    retry_on: tuple[type[BaseException], ...]
    max_concurrency: int
    on_max_concurrency: str
    result_ttl: float
    abort_ttl: float
    cancel_ttl: float
    default_ttl: float


def _exception_class(value: Any, path: str) -> type[BaseException]:
    if inspect.isclass(value) and issubclass(value, BaseException):
        return value
    if isinstance(value, str):
        module_name, _, attr = value.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name or "builtins"), attr)
        except (ImportError, AttributeError):
            cls = None
        if inspect.isclass(cls) and issubclass(cls, BaseException):
            return cls
    raise ConfigError(f"retry_on of task {path!r}: {value!r} is not an exception class or its dotted path.")


def _on_max_concurrency(value: Any, path: str) -> str:
    if value not in ("wait", "fail"):
        raise ConfigError(f"on_max_concurrency of task {path!r} is {value!r}: use 'wait' (the job waits for a "
                          "free slot, the default) or 'fail' (it ends as 'maxconcurrency', as in the original MRQ).")
    return str(value)


def task_settings(path: str, config: dict[str, Any], load: bool = True) -> TaskSettings:
    """Merge ``TASKS[path]``, the task class attributes and the defaults of ``config``.

    :param load: import the task to read its class attributes. A task that does not import here (a web app
        enqueuing tasks of another code base) gets the ``TASKS`` entry and the defaults.
    """
    entry = (config.get("tasks") or {}).get(path, {})
    cls: type | None = None
    if load:
        try:
            cls = _resolve(path)[0]
        except Exception:  # noqa: BLE001 - not importable here (or broken): the worker reports it when it runs
            cls = None

    def pick(key: str, default_key: str | None, fallback: Any = None) -> Any:
        if key in entry:
            return entry[key]
        if cls is not None and hasattr(cls, key):
            return getattr(cls, key)
        return config.get(default_key, fallback) if default_key else fallback

    retry_on = pick("retry_on", None, ()) or ()
    if not isinstance(retry_on, (list, tuple)):
        retry_on = (retry_on,)
    return TaskSettings(
        queue=pick("queue", None, None) or "default",
        timeout=float(pick("timeout", "default_job_timeout", 3600)),
        max_retries=int(pick("max_retries", "default_job_max_retries", 3)),
        retry_delay=float(pick("retry_delay", "default_job_retry_delay", 3)),
        retry_backoff=float(pick("retry_backoff", "default_job_retry_backoff", 2)),
        retry_max_delay=float(pick("retry_max_delay", "default_job_retry_max_delay", 3600)),
        retry_on=tuple(_exception_class(e, path) for e in retry_on),
        max_concurrency=int(pick("max_concurrency", None, 0) or 0),
        on_max_concurrency=_on_max_concurrency(pick("on_max_concurrency", None, "wait"), path),
        result_ttl=float(pick("result_ttl", "default_job_result_ttl", 7 * 86400)),
        abort_ttl=float(pick("abort_ttl", "default_job_abort_ttl", 86400)),
        cancel_ttl=float(pick("cancel_ttl", "default_job_cancel_ttl", 86400)),
        default_ttl=float(pick("default_ttl", "default_job_ttl", 180 * 86400)),
    )


class KernelHooks:
    """MRQ's own hook implementations (registered as plugin ``mrq.kernel``)."""

    @hookimpl(trylast=True)
    def mrq_job_execute(self, job: Job) -> Any:
        task = load_task(job.path)
        task.is_main_task = True
        result = task.run_wrapped(job.params)
        if inspect.isawaitable(result):  # an async def task: run on the process's event loop (mrq.aio)
            from mrq.aio import run_awaitable

            result = run_awaitable(result)
        try:
            size = len(bson.encode({"result": result}))
        except (bson.errors.InvalidDocument, OverflowError, TypeError, ValueError) as exc:
            raise InvalidParams(f"The result of task {job.path!r} cannot be stored in MongoDB: {exc}. "
                                "Return JSON-like values.") from None
        if size > 2**20 and size + len(bson.encode({"params": job.params})) > MAX_PARAMS_BYTES:
            raise InvalidParams(
                f"The result of task {job.path!r} is {size / 2**20:.1f} MiB in BSON: with the job's params it does "
                f"not fit in {MAX_PARAMS_BYTES // 2**20} MiB (MongoDB stores at most 16 MiB per job document). Store "
                "big results elsewhere (GridFS, a file, a bucket) and return their reference.")
        return result

