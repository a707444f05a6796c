"""``mrq-worker --processes N``: N worker processes under supervisord.

The ``mrq-worker`` process that received ``--processes N`` does not run jobs. It writes a supervisord
configuration to a temporary directory, runs ``supervisord -n`` (the ``supervisor`` package) as its own
child, and stays in front of it as a thin wrapper:

* supervisord runs N children, ``mrq-worker_00`` ... ``mrq-worker_<N-1>``: each is the same ``mrq-worker``
  command line without ``--processes``, marked with ``MRQ_SUPERVISED=1`` so that it runs as one ordinary
  worker (with its own report in ``mrq_workers``). A child that exits for any reason (a crash, SIGKILL,
  ``--max_jobs`` or ``--max_memory`` reached) is started again (``autorestart=true``).
* supervisord turns SIGINT and SIGTERM alike into "stop the programs with their ``stopsignal``", so it runs
  in a session of its own (a Ctrl-C in the terminal does not reach it) and the wrapper handles the
  signals: SIGINT = graceful stop of every child (``supervisor.stopAllProcesses``, whose ``stopsignal`` is
  INT: the workers finish their jobs); a second SIGINT, SIGTERM, or ``--stop_timeout`` seconds of graceful
  stop = the same, then SIGTERM to every child (the workers interrupt their jobs, which are requeued). Once
  no child runs, the wrapper asks supervisord to shut down and exits when it has: no process is left behind.
* No stop waits without end: supervisord's ``stopwaitsecs`` is ``--stop_timeout`` + :data:`INTERRUPT_GRACE`
  (what an interrupted worker needs to requeue its jobs and store their statuses), then SIGKILL. A signal
  that reaches the wrapper while it is still loading, or before supervisord answers, is acted on as soon as
  it can (:mod:`mrq.signals`); one that comes before supervisord was started means it is never started.
* ``supervisorctl -c <dir>/supervisord.conf status`` (or ``restart mrq-worker:mrq-worker_01``) talks to it
  through the unix socket of that directory; both are printed at start.

If the wrapper itself is SIGKILLed, supervisord gets SIGTERM from the kernel (``PR_SET_PDEATHSIG`` on
Linux) and stops the children gracefully.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHILD_ENV", "INTERRUPT_GRACE", "PROGRAM", "Supervisor", "child_argv", "is_supervised_child",
           "stopwaitsecs", "supervisord_config"]

#: Set in the environment of the children: they run as plain workers whatever ``--processes`` says.
CHILD_ENV = "MRQ_SUPERVISED"
#: supervisord program name; children are ``mrq-worker_00``, ``mrq-worker_01``...
PROGRAM = "mrq-worker"

log = logging.getLogger("mrq.supervisor")

#: Seconds an interrupted worker (SIGTERM) gets to end before supervisord SIGKILLs it: its jobs are killed at
#: once, then it stores their statuses (the status writer waits up to 60 s for MongoDB), requeues what it
#: dequeued and stops its services (5 s each at most).
INTERRUPT_GRACE = 120

_RUNNING = {"STARTING", "RUNNING", "BACKOFF", "STOPPING"}
_PR_SET_PDEATHSIG = 1


def stopwaitsecs(stop_timeout: float) -> int:
    """supervisord's ``stopwaitsecs`` for a graceful stop of ``stop_timeout`` seconds: the wrapper interrupts the
    jobs (SIGTERM) after ``stop_timeout``, and a worker still running :data:`INTERRUPT_GRACE` s later is SIGKILLed
    (by then the cleaning plugin requeues its jobs, each counting a worker death)."""
    return int(max(0.0, stop_timeout)) + INTERRUPT_GRACE


def is_supervised_child() -> bool:
    """True in a worker started by :class:`Supervisor` (it must not start children of its own)."""
    return os.environ.get(CHILD_ENV, "") not in ("", "0")


def child_argv(argv: Sequence[str], strip_name: bool = False) -> list[str]:
    """The ``mrq-worker`` arguments of a child: ``argv`` without ``--processes``/``-p`` (and ``--name``).

    Abbreviated flags that are left in (``--proc 3``) do no harm: children are marked by :data:`CHILD_ENV`.
    """
    out: list[str] = []
    flags = {"--processes", "-p"} | ({"--name"} if strip_name else set())
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg in flags:
            i += 2
            continue
        if any(arg.startswith(flag + "=") for flag in flags) or (arg.startswith("-p") and arg[2:].isdigit()):
            i += 1
            continue
        out.append(arg)
        i += 1
    return out + args[i:]


def _quote(arg: str) -> str:
    """One argument of a supervisord ``command=``: shell-quoted, ``%`` doubled (supervisord expands ``%(x)s``)."""
    return shlex.quote(arg).replace("%", "%%")


def supervisord_config(directory: str | Path, argv: Sequence[str], processes: int, stopwaitsecs: int,
                       name: str = "", cwd: str | None = None) -> str:
    """The text of the supervisord configuration for ``processes`` children running ``mrq-worker argv``."""
    directory = Path(directory)
    command = " ".join(_quote(w) for w in [sys.executable, "-m", "mrq.cli", "worker"])
    if name:  # one name per child: <name>.00, <name>.01... (supervisord expands %(process_num)02d)
        command += " --name " + _quote(name) + ".%(process_num)02d"
    command += "".join(" " + _quote(w) for w in child_argv(argv, strip_name=bool(name)))
    return f"""\
; Written by mrq-worker --processes {processes}; removed when it exits.
[unix_http_server]
file={directory / "supervisor.sock"}
chmod=0700

[supervisord]
nodaemon=true
logfile={directory / "supervisord.log"}
logfile_maxbytes=10MB
logfile_backups=0
pidfile={directory / "supervisord.pid"}
childlogdir={directory}
loglevel=info
{"user=root" if os.geteuid() == 0 else ""}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{directory / "supervisor.sock"}

[program:{PROGRAM}]
command={command}
process_name=%(program_name)s_%(process_num)02d
numprocs={processes}
directory={(cwd or os.getcwd()).replace("%", "%%")}
environment={CHILD_ENV}="1",MRQ_PROCESSES="0",MRQ_PROCESS_NUM="%(process_num)d"
autostart=true
; a worker that exits 0 on purpose (--max_jobs, --max_memory, --max_time) is started again, too
autorestart=true
; 0: even a worker that exits within a second (a short --max_jobs) is restarted at once, never FATAL
startsecs=0
startretries=5
; INT = graceful stop (finish the running jobs); the wrapper adds TERM to interrupt them
stopsignal=INT
stopwaitsecs={stopwaitsecs}
; SIGKILL (after stopwaitsecs) reaches the processes a task started; the stop signal reaches the worker only
killasgroup=true
stopasgroup=false
stdout_logfile=/dev/fd/1
stdout_logfile_maxbytes=0
stderr_logfile=/dev/fd/2
stderr_logfile_maxbytes=0
"""


def _die_with_parent() -> None:
    """In supervisord (preexec): get SIGTERM when the wrapper dies, so it stops the children (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Supervisor:
    """Run ``processes`` children of ``mrq-worker argv`` under supervisord until stopped by a signal.

    Runs in the gevent-patched ``mrq-worker`` process: signals, waits and XML-RPC calls are cooperative.
    """

    def __init__(self, argv: Sequence[str], processes: int, stop_timeout: float = 60.0, name: str = "",
                 directory: str | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self.argv = list(argv)
        self.processes = processes
        self.stop_timeout = stop_timeout
        self.stopwaitsecs = stopwaitsecs(stop_timeout)
        self.name = name
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mrq-supervisor-"))
        self.conf_path = self.directory / "supervisord.conf"
        self.socket_path = self.directory / "supervisor.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exitcode = 0
        self._stopping: str | None = None  # None, "graceful" or "interrupt"
        self._stopper: Any = None

    # ------------------------------------------------------------------ XML-RPC
    def rpc(self) -> Any:
        """A proxy of supervisord's XML-RPC interface (``.supervisor.getAllProcessInfo()``...)."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes_info(self) -> list[dict[str, Any]]:
        """supervisord's view of the children: ``name``, ``pid``, ``statename``..."""
        return list(self.rpc().supervisor.getAllProcessInfo())

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        """Start supervisord, wait until it has exited, and return the exit code."""
        import gevent

        from mrq import signals

        # Handlers first (and any SIGINT/SIGTERM recorded since mrq-worker started acted on): a signal can never
        # find supervisord started and the wrapper unable to stop it.
        signals.install({signal.SIGINT: lambda: self.stop(graceful=self._stopping is None),
                         signal.SIGTERM: lambda: self.stop(graceful=False)})
        if self._stopping is not None:
            log.info("Stopped before supervisord was started")
            self._cleanup()
            return self.exitcode
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(supervisord_config(self.directory, self.argv, self.processes,
                                                     self.stopwaitsecs, self.name))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            log.error("Cannot start supervisord with %s: %s", sys.executable, exc)
            self._cleanup()
            return 1
        if self._stopping is not None and self._stopper is None:  # a signal came during the Popen
            self._stopper = gevent.spawn(self._shutdown)
        watcher = gevent.spawn(self._watch)
        try:
            self.proc.wait()
        finally:
            watcher.kill(block=False)
            code = self.proc.returncode
            if code != 0 and self.exitcode == 0:
                log.error("supervisord exited with code %s; its log: %s", code, self.directory / "supervisord.log")
                self.exitcode = 1
            self._cleanup()
        return self.exitcode

    def _wait_until_up(self, timeout: float = 30) -> bool:
        import gevent

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                if self.rpc().supervisor.getState()["statename"] == "RUNNING":
                    return True
            except (OSError, xmlrpc.client.Error):
                pass
            gevent.sleep(0.1)
        return False

    def _watch(self) -> None:
        """Print how to reach supervisord once it is up; stop everything if no child can start."""
        import gevent

        if not self._wait_until_up():
            if self.proc is not None and self.proc.poll() is None:
                log.error("supervisord did not answer on %s within 30 s: stopping it", self.socket_path)
                self.exitcode = 1
                self.proc.terminate()
            return
        pid = self.proc.pid if self.proc else "?"
        print(f"mrq-worker: {self.processes} worker processes under supervisord (pid {pid});"
              f" socket unix://{self.socket_path}\n"
              f"mrq-worker: status: supervisorctl -c {self.conf_path} status", flush=True)
        while self._stopping is None:
            gevent.sleep(1)
            try:
                states = [p["statename"] for p in self.processes_info()]
            except (OSError, xmlrpc.client.Error):
                continue
            if states and all(s == "FATAL" for s in states) and self._stopping is None:
                log.error("No worker process could be started (all FATAL, see the supervisord log above): "
                          "stopping. Run the same command without --processes to see why.")
                self.exitcode = 1
                self.stop(graceful=True)

    def stop(self, graceful: bool = True) -> None:
        """Stop every child (``graceful=False``: interrupt their jobs), then supervisord."""
        import gevent

        mode = "graceful" if graceful else "interrupt"
        if self._stopping == "interrupt" or self._stopping == mode:
            return
        first = self._stopping is None
        self._stopping = mode
        if self.proc is None:  # supervisord not started yet: run() will not start it
            return
        if first:
            log.info("Stopping the worker processes (%s)", "finishing their jobs" if graceful else
                     "interrupting their jobs")
            self._stopper = gevent.spawn(self._shutdown)
        else:
            log.warning("Interrupting the jobs of the worker processes")
            gevent.spawn(self._terminate_children)

    def _shutdown(self) -> None:
        import gevent

        # A stop right after the start: supervisord may not answer yet (nor have started the children). Wait for it
        # (bounded): terminating it now could leave a child it is spawning without anyone to stop it.
        self._wait_until_up()
        try:
            self.rpc().supervisor.stopAllProcesses(False)  # stopsignal INT; STOPPING = no restart
        except (OSError, xmlrpc.client.Error) as exc:
            log.warning("Could not ask supervisord to stop the workers (%s); stopping supervisord", exc)
        if self._stopping == "interrupt":
            self._terminate_children()
        deadline = time.monotonic() + self.stop_timeout
        again = time.monotonic() + 1.0
        while self.proc is not None and self.proc.poll() is None:
            try:
                if not any(p["statename"] in _RUNNING for p in self.processes_info()):
                    break
            except (OSError, xmlrpc.client.Error):
                break
            if self._stopping == "graceful" and time.monotonic() > deadline:
                log.warning("Jobs still running after --stop_timeout %g s: interrupting them", self.stop_timeout)
                self.stop(graceful=False)
            elif self._stopping == "interrupt" and time.monotonic() > again:
                # A child still starting when its SIGTERM came may have missed it (Python's start-up, before
                # mrq-worker's first line): SIGTERM again each second; a worker already stopping ignores it.
                self._terminate_children()
                again = time.monotonic() + 1.0
            gevent.sleep(0.1)
        try:
            self.rpc().supervisor.shutdown()
        except (OSError, xmlrpc.client.Error):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()

    def _terminate_children(self) -> None:
        try:
            infos = self.processes_info()
        except (OSError, xmlrpc.client.Error) as exc:
            log.warning("Could not list the worker processes to interrupt them: %s", exc)
            return
        for info in infos:
            if info["statename"] in _RUNNING and info.get("pid"):
                try:
                    os.kill(int(info["pid"]), signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def _cleanup(self) -> None:
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def run(config: Any, argv: Sequence[str]) -> int:
    """``mrq-worker --processes N`` (called by :func:`mrq.cli.worker_main`)."""
    try:
        import supervisor.supervisord  # noqa: F401
    except ImportError:
        print(f"mrq-worker: error: --processes needs the 'supervisor' package, which {sys.executable} cannot "
              "import: pip install supervisor (or run one mrq-worker per process under your own supervisor).",
              file=sys.stderr)
        return 2
    return Supervisor(argv, int(config["processes"]), float(config["stop_timeout"]),
                      name=str(config.get("name") or "")).run()
