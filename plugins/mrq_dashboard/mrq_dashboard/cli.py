"""``mrq-dashboard``: serve the dashboard with gevent's WSGI server (never Flask's development server).

Configuration as every MRQ command: ``--redis``, ``--mongodb``, ``mrq-config.py``, ``MRQ_*`` variables,
``--plugins`` (the plugins of the configuration are enabled here too, so their pages appear), plus the
``--dashboard_*`` options of :mod:`mrq_dashboard.plugin`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "load_config", "make_wsgi_app"]

log = logging.getLogger("mrq.dashboard")


def load_config(argv: Sequence[str] | None, prog: str = "mrq-dashboard") -> Any:
    """The configuration of the ``dashboard`` command: the configured plugins plus this one.

    :raises mrq.exceptions.MRQError: a bad configuration (the message says which value and how to fix it).
    """
    from mrq.config import get_config
    from mrq.plugins import installed_plugins

    argv = list(argv or [])
    pre = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    pre.add_argument("--config", "-c", dest="config")
    pre.add_argument("--plugins", dest="plugins")
    known = vars(pre.parse_known_args(argv)[0])
    pre_argv = [arg for key, value in known.items() for arg in (f"--{key}", value)]
    names = list(get_config("common", argv=pre_argv, load_plugins=False)["plugins"])
    if not {"dashboard", "mrq_dashboard.plugin"} & set(names):
        names.append("dashboard" if "dashboard" in installed_plugins() else "mrq_dashboard.plugin")
    return get_config("dashboard", argv=argv, extra={"plugins": names}, prog=prog)


def make_wsgi_app(config: Any) -> Any:
    """The WSGI application for ``config`` (MRQ's context is set to it), behind ProxyFix if asked."""
    import pymongo
    from mrq.context import connections, set_current_config

    from mrq_dashboard.app import create_app
    from mrq_dashboard.indexes import ensure_dashboard_indexes

    set_current_config(config)
    down: Exception | None = None
    try:
        with pymongo.timeout(2):  # MongoDB down: serve at once (pages say so, the API answers 503), not in 30 s
            connections.mongodb_jobs.command("ping")
    except pymongo.errors.PyMongoError as exc:
        down = exc
    if config.get("dashboard_indexes", True) and down is None:
        # Before serving, not beside it: SecantusDB can livelock when an index is created on a collection that
        # another connection creates at the same moment by an insert.
        try:
            with pymongo.timeout(30):
                ensure_dashboard_indexes(connections.mongodb_jobs)
        except Exception as exc:  # noqa: BLE001 - the lists still work, only slower
            log.warning("Dashboard: could not create its indexes (%s: %s); job lists may be slow",
                        type(exc).__name__, exc)
    app: Any = create_app(config)
    if down is not None:
        from mrq.connections import unreachable

        reason = unreachable("MongoDB", str(config["mongodb_jobs"]), "mongodb", "MRQ_MONGODB_JOBS", down)
        app.extensions["mrq_dashboard_mongodb_down"]["reason"] = reason
        log.warning("Dashboard: %s. Serving anyway: the pages say so and the API answers 503 until it answers "
                    "(restart the dashboard then to create its indexes)", reason)
    if config.get("dashboard_trust_proxy"):
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_prefix=1)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``mrq-dashboard [options]``: serve until SIGINT or SIGTERM."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    import signal

    import gevent
    from gevent.pywsgi import WSGIServer
    from mrq.context import connections
    from mrq.exceptions import MRQError
    from mrq.version import __version__ as mrq_version

    from mrq_dashboard import __version__
    from mrq_dashboard.security import check_listen_address

    argv = list(sys.argv[1:] if argv is None else argv)
    if os.getcwd() not in sys.path:  # dotted-path plugins of the project (myproject.panel), as for mrq-worker
        sys.path.insert(0, os.getcwd())
    try:
        config = load_config(argv)
    except MRQError as exc:
        print(f"mrq-dashboard: error: {exc}", file=sys.stderr)
        return 2
    flags = argparse.ArgumentParser(add_help=False)  # MRQ's own parser accepted them: just see which were given
    flags.add_argument("--version", action="store_true")
    flags.add_argument("--list-plugins", dest="list_plugins", action="store_true")
    given = vars(flags.parse_known_args(argv)[0])
    if given["version"]:
        print(f"mrq-dashboard {__version__} (MRQ {mrq_version})")
        return 0
    if given["list_plugins"]:
        for row in config.plugin_manager.describe():
            state = "enabled" if row["enabled"] else "disabled"
            print(f"{row['name']} {row['version'] or '-'} [{state}] ({row['source']})")
        return 0
    logging.basicConfig(level=config["log_level"], format=config["log_format"], stream=sys.stderr)
    refusal = check_listen_address(config["dashboard_ip"], config["dashboard_httpauth"],
                                   bool(config["dashboard_allow_public"]))
    if refusal:
        print(f"mrq-dashboard: error: {refusal}", file=sys.stderr)
        return 2
    stopped = gevent.event.Event()  # from now on: a SIGINT/SIGTERM during the start-up stops it too
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, stopped.set)
    try:
        app = make_wsgi_app(config)
        connections.redis, connections.mongodb_jobs  # noqa: B018 - a bad URI is an error now, not per request
    except MRQError as exc:
        print(f"mrq-dashboard: error: {exc}", file=sys.stderr)
        return 2
    access_log = logging.getLogger("mrq.dashboard.access")
    server = WSGIServer((config["dashboard_ip"], int(config["dashboard_port"])), app,
                        log=access_log if config["log_level"] == "DEBUG" else None, error_log=log)
    try:
        server.start()
    except OSError as exc:
        print(f"mrq-dashboard: error: cannot listen on {config['dashboard_ip']}:{config['dashboard_port']}: "
              f"{exc}. Choose another --dashboard_port or --dashboard_ip.", file=sys.stderr)
        return 2
    host = config["dashboard_ip"]
    shown = f"[{host}]" if ":" in host else host
    mode = " (read-only)" if config["dashboard_readonly"] else ""
    print(f"MRQ dashboard{mode}: http://{shown}:{server.server_port}/", flush=True)
    stopped.wait()
    server.stop(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
