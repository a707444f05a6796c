"""Command-line entry points: ``mrq-worker``, ``mrq-run``, ``mrq-plugins``, ``mrq-embedded``.

Each monkey-patches with gevent before importing pymongo or redis.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any


def _patch() -> None:
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _load(command: str, argv: Sequence[str] | None, prog: str) -> Any:
    """Resolve the config, handle --version/--list-plugins, set up logging. Exits on a bad config."""
    from mrq.config import get_config
    from mrq.exceptions import MRQError
    from mrq.plugins import print_plugins
    from mrq.runtime import set_current_config
    from mrq.version import __version__

    try:
        config = get_config(command, argv=list(sys.argv[1:] if argv is None else argv), prog=prog)
    except MRQError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    flags = config["_flags"]
    if flags.get("version"):
        print(f"MRQ {__version__} (Python {sys.version.split()[0]})")
        raise SystemExit(0)
    if flags.get("list_plugins"):
        print_plugins(config.plugin_manager)
        raise SystemExit(0)
    logging.basicConfig(level=config["log_level"], format=config["log_format"], stream=sys.stderr)
    if config["quiet"]:
        logging.getLogger("mrq.current").propagate = False
    set_current_config(config)
    from mrq.runtime import connections

    try:  # validate the URIs now (clients connect lazily): a clear error, not a traceback later
        connections.redis, connections.mongodb_jobs, connections.mongodb_logs  # noqa: B018
    except MRQError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return config


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``mrq-worker [queues...]``: run jobs from these queues (priority order) until stopped."""
    from mrq import signals

    # First of all: a SIGINT/SIGTERM that comes while this process loads is recorded and acted on once the worker
    # (or the --processes wrapper) can, instead of raising KeyboardInterrupt at a random point (see mrq.signals).
    signals.catch_early()
    _patch()
    config = _load("worker", argv, "mrq-worker")
    if signals.pending():  # stopped while loading: nothing was started, nothing to stop
        return 0
    if config["processes"] > 0:
        from mrq import supervisor

        if not supervisor.is_supervised_child():  # a child of --processes runs as one worker
            code = supervisor.run(config, list(sys.argv[1:] if argv is None else argv))
            _skip_pymongo_exit_wait()
            return code
    from mrq.worker import Worker

    code = Worker(config).work()
    _skip_pymongo_exit_wait()
    return code


def _skip_pymongo_exit_wait() -> None:
    """The worker is done: close the MongoDB clients, and let the interpreter exit without pymongo's atexit hook,
    which joins each monitor "thread" while it finishes a sleep of 0.5 s (every worker stop took 0.5 s more).
    Under gevent those threads are greenlets: there is nothing to wait for once the clients are closed."""
    import atexit

    from mrq.runtime import connections

    try:
        connections.reset()
        import importlib

        for module, name in (("pymongo.synchronous.monitor", "_shutdown_resources"),  # pymongo 4.9+
                             ("pymongo.monitor", "_shutdown_resources"),
                             ("pymongo.periodic_executor", "_shutdown_executors")):
            try:
                atexit.unregister(getattr(importlib.import_module(module), name))
            except (ImportError, AttributeError):
                continue
    except Exception:  # noqa: BLE001 - only an exit that takes longer
        pass


def _parse_params(args: Sequence[str]) -> dict[str, Any]:
    from mrq.exceptions import InvalidParams

    if not args:
        return {}
    if len(args) == 1:
        try:
            params = json.loads(args[0])
        except json.JSONDecodeError as exc:
            raise InvalidParams(f"Params {args[0]!r:.200} are not valid JSON ({exc}); pass one JSON object like "
                                "'{\"a\": 1}', or key value pairs.") from None
        except RecursionError:
            raise InvalidParams(f"Params {args[0]!r:.200} are nested too deeply to read; flatten them.") from None
        if not isinstance(params, dict):
            raise InvalidParams(f"Params must be a JSON object, not {type(params).__name__}: {args[0]:.200}")
        return params
    if len(args) % 2:
        raise InvalidParams("Params given as key value pairs need an even number of arguments.")
    return {key: _pair_value(value) for key, value in zip(args[::2], args[1::2], strict=True)}


def _pair_value(text: str) -> Any:
    """A key value pair's value: JSON when it reads as JSON (``1``, ``true``, ``[1, 2]``, ``"1"``), else the text
    itself (``bob``, ``007``). NaN and Infinity stay text."""
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return text


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str))


def run_main(argv: Sequence[str] | None = None) -> int:
    """``mrq-run TASK [params]``: run a task here and print its result, or enqueue it (``--async``/``--queue``)."""
    _patch()
    config = _load("run", argv, "mrq-run")
    from mrq import status as st
    from mrq.exceptions import MRQError
    from mrq.job import Job, queue_job
    from mrq.task import load_task, task_settings

    path = config["taskpath"]
    if not path:
        print("mrq-run: error: give a task path, e.g. mrq-run tasks.Add '{\"a\": 1, \"b\": 2}'", file=sys.stderr)
        return 2
    try:
        params = _parse_params(config["taskargs"])
        if config["queue"] or config["async"] or config["delay"]:
            job_id = queue_job(path, params, queue=config["queue"] or None, delay=config["delay"])
            if not config["wait"]:
                print(job_id)
                return 0
            print(job_id, file=sys.stderr)
            data = _wait_with_progress(Job(job_id))
            if data.get("status") == st.SUCCESS:
                _print_json(data.get("result"))
                return 0
            print(f"Job {job_id} ended with status {data.get('status')}:\n{data.get('traceback') or ''}",
                  file=sys.stderr)
            return 1
        load_task(path)  # a clear error now for a path that does not import
        job = Job(None, {"path": path, "params": params, "queue": "", "retry_count": 0})
        outcome = job.perform(task_settings(path, config))
    except MRQError as exc:
        print(f"mrq-run: error: {exc}", file=sys.stderr)
        return 2
    if outcome.status == st.SUCCESS:
        _print_json(job.result)
        return 0
    print(job.traceback or outcome.status, file=sys.stderr, end="")
    return 1


def _wait_with_progress(job: Any) -> dict[str, Any]:
    import gevent

    shown = False
    while True:
        job.fetch()
        data = job.data or {}
        if data.get("status") not in ("queued", "started"):
            if shown:
                print(file=sys.stderr)
            return data
        progress = data.get("progress")
        if progress is not None and sys.stderr.isatty():
            bar = "#" * int(progress * 30)
            print(f"\r[{bar:<30}] {progress * 100:5.1f}%", end="", file=sys.stderr, flush=True)
            shown = True
        gevent.sleep(0.2)


def plugins_main(argv: Sequence[str] | None = None) -> int:
    """``mrq-plugins``: list installed plugins, their versions, whether enabled and their hooks."""
    if os.getcwd() not in sys.path:  # dotted-path plugins of the project, as for mrq-worker
        sys.path.insert(0, os.getcwd())
    from mrq.plugins import print_plugins

    config = _load("common", argv, "mrq-plugins")
    print_plugins(config.plugin_manager)
    return 0


def embedded_main(argv: Sequence[str] | None = None) -> int:
    """``mrq-embedded``: start Redis + MongoDB under ./.mrq/, a worker with the example tasks."""
    from mrq.embedded import main

    return main(argv)


if __name__ == "__main__":  # python -m mrq.cli worker|run|plugins ...
    _commands = {"worker": worker_main, "run": run_main, "plugins": plugins_main, "embedded": embedded_main}
    if len(sys.argv) < 2 or sys.argv[1] not in _commands:
        print(f"usage: python -m mrq.cli {{{','.join(_commands)}}} ...", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_commands[sys.argv[1]](sys.argv[2:]))
