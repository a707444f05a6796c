"""``mrq-worker --processes N``: real worker processes under supervisord (mrq/supervisor.py)."""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from mrq.job import Job, queue_jobs
from mrq.queue import Queue
from mrq.supervisor import CHILD_ENV, INTERRUPT_GRACE, child_argv, stopwaitsecs, supervisord_config
from mrq.testing import FAST_WORKER_ENV, ServerURLs, wait_until

T = "tests.tasks.general."




def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Supervised:
    """``mrq-worker --processes N ...`` as a subprocess; reads the socket path it prints."""

    def __init__(self, urls: ServerURLs, cwd: str) -> None:
        self.urls, self.cwd = urls, cwd
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.socket = ""
        self.pids: set[int] = set()  # every supervisord and child pid seen

    def start(self, *args: str, env: dict[str, str] | None = None) -> Supervised:
        full_env = dict(os.environ, **FAST_WORKER_ENV, MRQ_REDIS=self.urls.redis,
                        MRQ_MONGODB_JOBS=self.urls.mongodb, PYTHONUNBUFFERED="1", **(env or {}))
        full_env.pop(CHILD_ENV, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker", *args], cwd=self.cwd,
                                     env=full_env, stdout=subprocess.PIPE, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.socket = wait_until(self._socket, 30, "the socket line on stdout")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            sys.stdout.write(line)

    def _socket(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mrq-worker exited with {self.proc.returncode}:\n{''.join(self.lines)}")
        for line in self.lines:
            m = re.search(r"socket unix://(\S+)", line)
            if m:
                return m.group(1)
        return ""

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        return xmlrpc.client.ServerProxy("http://127.0.0.1", SupervisorTransport(None, None, "unix://" + self.socket))

    def children(self) -> dict[str, int]:
        """Running children: name -> pid."""
        infos = self.rpc().supervisor.getAllProcessInfo()
        out = {i["name"]: i["pid"] for i in infos if i["statename"] == "RUNNING" and i["pid"]}
        self.pids |= set(out.values()) | {self.rpc().supervisor.getPID()}
        return out

    def reports(self, db: Any) -> dict[int, dict[str, Any]]:
        """The current mrq_workers report of each running child, by pid."""
        pids = set(self.children().values())
        return {r["pid"]: r for r in db["mrq_workers"].find({"pid": {"$in": list(pids)}, "status": {"$ne": "stop"}})}

    def wait_ready(self, db: Any, count: int) -> dict[int, dict[str, Any]]:
        return wait_until(lambda: (lambda r: r if len(r) == count else None)(self.reports(db)), 30,
                     f"{count} worker reports")

    def stop(self, sig: int, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # supervisord gets SIGTERM through PR_SET_PDEATHSIG and stops the children
            self.proc.wait()
        try:
            for pid in self.pids:
                wait_until(lambda pid=pid: not _alive(pid), 30, f"pid {pid} gone")
        finally:  # never leave a worker behind to take the jobs of later tests
            for pid in self.pids:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)

    def assert_no_process_left(self) -> None:
        assert self.pids, "no pids seen"
        left = [pid for pid in self.pids if _alive(pid)]
        assert not left, f"processes left behind: {left}"


@pytest.fixture
def supervised(mrq_urls: ServerURLs, mrq_config: Any, request: pytest.FixtureRequest) -> Iterator[Supervised]:
    runner = Supervised(mrq_urls, str(request.config.rootpath))
    try:
        yield runner
    finally:
        runner.kill()


def _db() -> Any:
    from mrq.context import connections

    return connections.mongodb_jobs


# ------------------------------------------------------------------------------------------ pure


def test_child_argv_drops_processes_and_keeps_the_rest():
    argv = ["--processes", "3", "-g", "10", "--processes=2", "-p", "4", "-p5", "--name", "w", "high", "default"]
    assert child_argv(argv) == ["-g", "10", "--name", "w", "high", "default"]
    assert child_argv(argv, strip_name=True) == ["-g", "10", "high", "default"]
    assert child_argv(["-p", "2", "--", "-p", "x"]) == ["--", "-p", "x"]


def test_config_is_valid_and_escapes_percent(tmp_path):
    text = supervisord_config(tmp_path, ["-p", "2", "--log_format", "%(message)s", "q 1"], 2, 90, name="box")
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    prog = parser["program:mrq-worker"]
    assert prog["numprocs"] == "2"
    assert prog["stopsignal"] == "INT"
    assert prog["stopwaitsecs"] == "90"
    assert int(stopwaitsecs(60)) == 60 + INTERRUPT_GRACE  # bounded: never the job timeout (an hour by default)
    assert prog["autorestart"] == "true"
    assert CHILD_ENV in prog["environment"]
    assert parser["supervisorctl"]["serverurl"] == f"unix://{tmp_path / 'supervisor.sock'}"
    # supervisord expands %(...)s: the log format's % is doubled, the process number is not
    assert "'%%(message)s'" in prog["command"]
    assert "--name box.%(process_num)02d" in prog["command"]
    assert "'q 1'" in prog["command"] and " -p " not in prog["command"]
    # supervisord itself accepts the file
    from supervisor.options import ServerOptions

    (tmp_path / "s.conf").write_text(text)
    options = ServerOptions()
    options.realize(["-c", str(tmp_path / "s.conf")])
    [group] = options.process_group_configs
    assert [p.name for p in group.process_configs] == ["mrq-worker_00", "mrq-worker_01"]
    import shlex

    assert shlex.split(group.process_configs[1].command)[-5:] == ["--name", "box.01", "--log_format", "%(message)s",
                                                                   "q 1"]


# ------------------------------------------------------------------------------------------ real processes


@pytest.mark.skipif(importlib.util.find_spec("mrq_cleaning") is None,
                    reason="needs the mrq-cleaning plugin (pip install -e plugins/mrq_cleaning) to requeue "
                           "the jobs of a SIGKILLed child")
def test_sigkill_child_is_respawned_no_job_lost_then_sigint_is_graceful(supervised):
    supervised.start("--processes", "2", "--greenlets", "2", "--plugins", "cleaning", "default",
                     env={"MRQ_CLEANING_DEAD_INTERVAL": "0.5"})
    db = _db()
    reports = supervised.wait_ready(db, 2)
    assert len({r["_id"] for r in reports.values()}) == 2

    ids = queue_jobs(T + "Sleep", [{"t": 2, "result": i} for i in range(4)])
    wait_until(lambda: all(Job(i).fetch().data["status"] == "started" for i in ids), what="4 jobs started")
    victim_worker = Job(ids[0]).fetch().data["worker"]
    victim = next(pid for pid, r in reports.items() if r["_id"] == victim_worker)
    os.kill(victim, signal.SIGKILL)
    new = wait_until(lambda: (lambda c: c if len(c) == 2 and victim not in c.values() else None)(supervised.children()),
                what="the killed child respawned")
    assert set(new.values()) - {victim}
    for i in ids:
        assert Job(i).wait(timeout=30) == ids.index(i)  # the killed child's jobs were requeued and ran

    # SIGINT to the parent: every child finishes its jobs, then everything exits
    later = queue_jobs(T + "Sleep", [{"t": 1.5, "result": "late"}] * 2)
    wait_until(lambda: all(Job(i).fetch().data["status"] == "started" for i in later), what="jobs started")
    supervised.children()
    assert supervised.stop(signal.SIGINT) == 0
    assert [Job(i).fetch().data["status"] for i in later] == ["success", "success"]
    supervised.assert_no_process_left()
    stopped = list(supervised.pids - {victim})  # the SIGKILLed child never wrote its last report
    assert db["mrq_workers"].count_documents({"status": {"$ne": "stop"}, "pid": {"$in": stopped}}) == 0


def test_sigterm_interrupts_and_requeues_then_exits(supervised):
    supervised.start("--processes", "2", "--greenlets", "1", "default")
    supervised.wait_ready(_db(), 2)
    ids = queue_jobs(T + "Sleep", [{"t": 30}] * 2)
    wait_until(lambda: all(Job(i).fetch().data["status"] == "started" for i in ids), what="2 jobs started")
    workers = {Job(i).fetch().data["worker"] for i in ids}
    assert len(workers) == 2  # one per process
    supervised.children()
    started = time.monotonic()
    assert supervised.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 15
    assert [Job(i).fetch().data["status"] for i in ids] == ["interrupt", "interrupt"]
    assert Queue("default").size() == 2
    supervised.assert_no_process_left()


def test_a_graceful_stop_interrupts_the_jobs_after_stop_timeout(supervised):
    supervised.start("--processes", "1", "--stop_timeout", "1", "default")
    supervised.wait_ready(_db(), 1)
    [job] = queue_jobs(T + "Sleep", [{"t": 600}])
    wait_until(lambda: Job(job).fetch().data["status"] == "started", what="the job started")
    supervised.children()
    assert supervised.stop(signal.SIGINT, timeout=60) == 0  # not 600 s: interrupted after --stop_timeout
    assert Job(job).fetch().data["status"] == "interrupt"
    assert Queue("default").size() == 1  # requeued
    supervised.assert_no_process_left()


def test_children_exiting_on_max_jobs_are_respawned(supervised):
    ids = queue_jobs(T + "Sleep", [{"t": 0.05, "result": i} for i in range(6)])
    supervised.start("--processes", "1", "--max_jobs", "2", "default")
    for i in ids:
        assert Job(i).wait(timeout=60) == ids.index(i)
    workers = {Job(i).fetch().data["worker"] for i in ids}
    assert len(workers) >= 3  # each process ran at most 2 jobs
    supervised.children()
    assert supervised.stop(signal.SIGINT) == 0
    supervised.assert_no_process_left()


def test_supervisorctl_restarts_one_child(supervised):
    supervised.start("--processes", "2", "default")
    before = wait_until(lambda: (lambda c: c if len(c) == 2 else None)(supervised.children()), what="2 children")
    conf = os.path.join(os.path.dirname(supervised.socket), "supervisord.conf")
    assert f"supervisorctl -c {conf} status" in "".join(supervised.lines)
    ctl = [sys.executable, "-m", "supervisor.supervisorctl", "-c", conf]
    out = subprocess.run([*ctl, "status"], capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"mrq-worker_00\s+RUNNING", out) and re.search(r"mrq-worker_01\s+RUNNING", out), out
    subprocess.run([*ctl, "restart", "mrq-worker:mrq-worker_01"], check=True, capture_output=True, timeout=60)
    after = supervised.children()
    assert after["mrq-worker_00"] == before["mrq-worker_00"]
    assert after["mrq-worker_01"] != before["mrq-worker_01"]
    assert supervised.stop(signal.SIGINT) == 0
    supervised.assert_no_process_left()


def test_parent_killed_leaves_no_process(supervised):
    supervised.start("--processes", "2", "default")
    wait_until(lambda: len(supervised.children()) == 2, what="2 children")
    supervised.kill()  # SIGKILL of the parent: supervisord (PR_SET_PDEATHSIG) stops the children
    supervised.assert_no_process_left()
