"""One ``/metrics`` per host: the directory the worker processes share, and the process that serves it.

Every worker process of a host started with the same ``--metrics_port`` writes its figures to the same
directory (``--metrics_dir``, by default ``<tmp>/mrq-metrics-<uid>-<port>``), in ``prometheus_client``'s
multiprocess files (``counter_<pid>.db``...). Each of them tries to listen on the port; the one that gets it
serves the sum of all the files, the others try again every ``--metrics_interval`` (if it dies, another one
takes the port within that time). So a scrape sees every process, whichever answers it:

* the counts of a process that ended stay in the sums (its counter and histogram files are kept: a host's
  counters never go down while one of its workers runs);
* the gauges of a dead process (jobs in progress, greenlets) are dropped: before each scrape, the files of pids
  that no longer run go through ``prometheus_client.multiprocess.mark_process_dead``, and their counter and
  histogram files are merged into one archive file per kind (:meth:`SharedDir.compact`);
* the first process to start when none runs (a lock file that every live process holds shared) empties the
  directory: the counters of the host start again from 0, which Prometheus' ``rate()`` reads as a restart.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

__all__ = ["SharedDir", "Endpoint", "default_dir", "pid_alive", "metrics_app"]

log = logging.getLogger("mrq.metrics")

_PID = re.compile(r"_(\d+)\.db$")


def default_dir(port: int) -> str:
    """The directory shared by the worker processes of this user that serve ``port`` on this host."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"mrq-metrics-{uid}-{port}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:  # no /proc (not Linux): kill(0) said it exists
        return True


class SharedDir:
    """The multiprocess directory of one host's endpoint."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def join(self) -> bool:
        """Take a shared lock on the directory for this process's life; empty the directory first if no other
        live process holds it. Returns whether it was emptied."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.path, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        emptied = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        else:
            for name in glob.glob(os.path.join(self.path, "*.db")):
                os.remove(name)
            emptied = True
        fcntl.flock(fd, fcntl.LOCK_SH)  # downgrades ours, or waits for the process that is emptying it
        self._fd = fd
        return emptied

    def pids(self) -> set[int]:
        return {int(m.group(1)) for name in os.listdir(self.path) if (m := _PID.search(name))}

    def bury(self, alive: Callable[[int], bool] = pid_alive) -> list[int]:
        """Drop the live gauges (``mark_process_dead``) of the processes that left files and no longer run."""
        dead = [pid for pid in self.pids() if pid != os.getpid() and not alive(pid)]
        for pid in dead:
            mark_process_dead(pid, self.path)
        return dead

    def compact(self, alive: Callable[[int], bool] = pid_alive) -> list[int]:
        """Merge the counter and histogram files of the processes that no longer run into one archive file per kind
        (``counter_archive.db``, ``histogram_archive.db``), so that a host whose workers restart often (``--max_jobs``)
        does not read more and more files per scrape; the sums are unchanged. The new archive is written aside then
        renamed over the old one, and the merged files removed after: only a kill between these two steps would
        count them twice. Returns the pids merged."""
        merged: set[int] = set()
        for typ in ("counter", "histogram"):
            files: dict[int, str] = {}
            for name in os.listdir(self.path):
                m = re.fullmatch(typ + r"_(\d+)\.db", name)
                if m and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
                    files[int(m.group(1))] = os.path.join(self.path, name)
            if not files:
                continue
            archive = os.path.join(self.path, f"{typ}_archive.db")
            totals: dict[str, float] = {}
            for path in ([archive] if os.path.exists(archive) else []) + list(files.values()):
                for key, value, _, _ in MmapedDict.read_all_values_from_file(path):
                    totals[key] = totals.get(key, 0.0) + value
            aside = archive + ".new"  # not *.db: never read by a scrape
            if os.path.exists(aside):
                os.remove(aside)
            new = MmapedDict(aside)
            for key, value in totals.items():
                new.write_value(key, value, 0.0)
            new.close()
            os.replace(aside, archive)
            for path in files.values():
                os.remove(path)
            merged |= set(files)
        return sorted(merged)

    def leave(self) -> None:
        """This process stops: its live gauges go, its counts stay; its lock is released."""
        mark_process_dead(os.getpid(), self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class HostCollector(Collector):
    """The sum of the host's files, after the dead processes' gauges were dropped; ``before`` runs first (the
    serving process writes its own latest figures)."""

    def __init__(self, shared: SharedDir, before: Callable[[], None] | None = None) -> None:
        self.shared = shared
        self.before = before
        self._files = MultiProcessCollector(None, path=shared.path)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        if self.before is not None:
            self.before()
        self.shared.bury()
        self.shared.compact()
        yield from self._files.collect()


def metrics_app(collectors: Iterable[Collector]) -> Callable[..., Any]:
    """A WSGI application serving the collectors in Prometheus' text format at ``/metrics`` (and ``/``);
    ``prometheus_client`` negotiates OpenMetrics and gzip."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Not found: the metrics are at /metrics\n"]
        return metrics(environ, start_response)

    return app


class Endpoint:
    """The host's ``/metrics``, if this process got the port."""

    def __init__(self, ip: str, port: int, app: Callable[..., Any]) -> None:
        self.ip, self.port, self.app = ip, port, app
        self.server: Any = None
        self._warned: set[int | None] = set()

    @property
    def serving(self) -> bool:
        return self.server is not None

    def try_serve(self) -> bool:
        """Listen on the port unless another process does (then try again later); True if this one serves."""
        if self.server is not None:
            return True
        from gevent.pywsgi import WSGIServer

        server = WSGIServer((self.ip, self.port), self.app, log=None, error_log=log)
        try:
            server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE and exc.errno not in self._warned:  # in use: another process serves
                self._warned.add(exc.errno)
                log.warning("metrics: cannot listen on %s:%d: %s (trying again every --metrics_interval)", self.ip,
                            self.port, exc)
            return False
        self.server = server
        log.info("metrics: serving http://%s:%d/metrics for the worker processes of this host", self.ip, self.port)
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None
