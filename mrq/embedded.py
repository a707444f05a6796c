"""Embedded mode: Redis and a MongoDB-compatible server started under ``./.mrq/`` for a laptop or a demo.

``mrq-embedded`` starts both servers, a worker on the example tasks, queues a
few jobs and prints what to look at. Any command given ``--embedded`` (or
``MRQ_EMBEDDED=1``) joins those servers, or starts them if they are not running.
Production points ``--redis`` and ``--mongodb`` at real servers instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Joining or starting the servers is mrq.servers' work (the configuration calls it for --embedded); named here too.
from mrq.servers import EMBEDDED_DIR, _answers, _kept, apply_embedded, ensure_servers

__all__ = ["apply_embedded", "ensure_servers", "main", "EMBEDDED_DIR"]


def _start_dashboard(env: dict[str, str]) -> tuple[Any, str | None]:
    """Start ``mrq-dashboard`` (port 5555, else any free one) when the dashboard plugin is installed."""
    import shutil

    from mrq.plugins import installed_plugins

    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    script = shutil.which("mrq-dashboard", path=path)
    if "dashboard" not in installed_plugins() or script is None:
        return None, None
    port = "5555" if not _answers(5555) else "0"
    proc = subprocess.Popen([script, "--dashboard_port", port], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # Ctrl-C reaches it once, from mrq-embedded
    line = proc.stdout.readline() if proc.stdout else ""  # "MRQ dashboard: http://127.0.0.1:5555/"
    return proc, (line.split()[-1] if line.startswith("MRQ dashboard") else None)


def _command(name: str) -> str:
    """``name`` as it can be typed in a terminal of the current folder: bare when this Python's ``bin`` folder is
    on PATH (an activated venv), else its path (``.venv/bin/mrq-run`` after ``make demo``)."""
    import shlex
    import shutil

    script = Path(sys.executable).parent / name
    found = shutil.which(name)
    if not script.exists() or (found and os.path.samefile(found, script)):
        return name
    relative = os.path.relpath(script)
    return shlex.quote(str(script) if relative.startswith("..") else relative)


def _print_banner(redis_url: str, mongodb_uri: str, worker_pid: int, dashboard_url: str | None = None) -> None:
    if dashboard_url:
        print(f"\nDashboard: {dashboard_url}", flush=True)
    run = _command("mrq-run")
    examples = [
        (f"{run} --embedded mrq.examples.tasks.Add '{{\"a\": 41, \"b\": 1}}'", "runs here, prints 42"),
        (f"{run} --embedded --async --wait mrq.examples.tasks.Crawl '{{\"pages\": 20}}'", "queued, progress bar"),
        (f"{run} --embedded --async mrq.examples.tasks.Fail '{{}}'", "prints the job id")]
    width = max(len(command) for command, _ in examples)
    tries = "\n".join(f"  {command.ljust(width)}  # {what}" for command, what in examples)
    activate = ""
    if run != "mrq-run":
        bindir = os.path.dirname(run)
        activate = (f"\n(`source {bindir}/activate` puts the commands of {bindir} on PATH: then `mrq-run` works as "
                    "is.)")
    print(f"""
MRQ is running on embedded servers (data in {EMBEDDED_DIR.resolve()}):
  Redis    {redis_url}
  MongoDB  {mongodb_uri}
  Worker   pid {worker_pid}, queues: default, 10 greenlets (tasks in mrq/examples/tasks.py)

Try, in another terminal (same folder):
{tries}{activate}
{"See every job, queue and worker in the dashboard above." if dashboard_url else
 "Job documents (status, result, traceback) are in the mrq_jobs collection, logs in mrq_logs, workers in "
 "mrq_workers (pip install -e plugins/mrq_dashboard for the dashboard)."}
Press Ctrl-C to stop everything: running jobs end first (the examples at once); a second Ctrl-C interrupts them
(they are requeued).
""", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``mrq-embedded``: servers + a worker with example jobs, in the foreground until Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print("usage: mrq-embedded [mrq-worker options]\n" + (__doc__ or "") +
              "\nOptions are passed to the worker (queue: default); see `mrq-worker --help`.")
        return 0
    from mrq.exceptions import MRQError

    checked = _worker_options_ok(argv)
    if checked is not None:  # a mistake (2), or --version / --list-plugins printed (0)
        return checked

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Terminate

    signal.signal(signal.SIGTERM, on_sigterm)  # stop the servers on SIGTERM too, not only on Ctrl-C
    worker = dashboard = None
    try:
        try:
            redis_url, mongodb_uri = ensure_servers()
        except MRQError as exc:
            print(f"mrq-embedded: error: {exc}", file=sys.stderr)
            return 1
        env = dict(os.environ, MRQ_REDIS=redis_url, MRQ_MONGODB_JOBS=mongodb_uri, MRQ_EMBEDDED="")
        seed = subprocess.run([sys.executable, "-c", _SEED], env=env, capture_output=True, text=True)
        if seed.returncode:
            print(seed.stderr, file=sys.stderr)
            return 1
        from mrq.plugins import installed_plugins

        plugins = [p for p in ("cleaning",) if p in installed_plugins()]  # requeuers, when installed
        # In sessions of their own: a Ctrl-C in the terminal reaches this process only, which tells them once.
        worker = subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker", "--greenlets", "10",
                                   "--report_interval", "2", "--plugins", ",".join(plugins), *argv, "default"],
                                  env=env, start_new_session=True)
        dashboard, dashboard_url = _start_dashboard(env)
        _print_banner(redis_url, mongodb_uri, worker.pid, dashboard_url)
        print(seed.stdout, flush=True)
        _wait_for(worker)
    except (KeyboardInterrupt, _Terminate) as exc:  # before the worker started
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
            _wait_for(worker)
    finally:
        if dashboard is not None and dashboard.poll() is None:
            dashboard.send_signal(signal.SIGINT)
            dashboard.wait(10)
        for server in _kept:
            server.stop()
    return worker.returncode or 0 if worker is not None else 0


class _Terminate(Exception):
    """SIGTERM reached ``mrq-embedded``: the worker is interrupted, the servers stopped."""


def _wait_for(worker: subprocess.Popen[Any]) -> None:
    """Wait for the worker to exit. A first Ctrl-C stops it (running jobs end first), a second one or SIGTERM
    interrupts its running jobs (requeued)."""
    interrupts = 0
    while worker.poll() is None:
        try:
            time.sleep(0.2)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 1:
                print("\nStopping: the worker takes no new job and waits for the running ones to end (the "
                      "examples stop at once); press Ctrl-C again to interrupt them (they are requeued).", flush=True)
                worker.send_signal(signal.SIGINT)
            else:
                print("\nInterrupting the running jobs (they are requeued)...", flush=True)
                worker.send_signal(signal.SIGTERM)
        except _Terminate:
            worker.send_signal(signal.SIGTERM)


def _worker_options_ok(argv: list[str]) -> int | None:
    """Check the worker options before starting anything: a typo fails at once, with no server started (2);
    ``--version`` and ``--list-plugins`` print and exit (0). ``None``: go on."""
    from mrq.config import get_config
    from mrq.exceptions import MRQError

    try:
        config = get_config("worker", argv=[*argv, "default"], extra={"embedded": False}, prog="mrq-embedded")
    except MRQError as exc:
        print(f"mrq-embedded: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse printed the usage and the error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    flags = config["_flags"]
    if flags.get("version"):
        from mrq.version import __version__

        print(f"MRQ {__version__} (Python {sys.version.split()[0]})")
        return 0
    if flags.get("list_plugins"):
        from mrq.plugins import print_plugins

        print_plugins(config.plugin_manager)
        return 0
    return None


_SEED = """
from mrq.context import setup_context
from mrq.job import queue_job, queue_jobs
setup_context()
ids = queue_jobs("mrq.examples.tasks.Add", [{"a": i, "b": i} for i in range(20)])
crawl = queue_job("mrq.examples.tasks.Crawl", {"pages": 30})
flaky = queue_job("mrq.examples.tasks.Flaky", {})
fail = queue_job("mrq.examples.tasks.Fail", {})
print("Queued 20 Add jobs, Crawl", crawl, ", Flaky", flaky, "and Fail", fail)
"""
