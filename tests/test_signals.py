"""A worker honours SIGINT and SIGTERM at every moment of its life, start-up and Redis data-lost recovery included,
alone and under ``--processes`` (docs/deployment.md, "Stopping").

Each case starts ``mrq-worker`` in a session of its own with a marker in its environment, sends one signal, and
checks that every process carrying the marker (the worker, or the wrapper, supervisord and the children) is gone
within a bounded time. No timing is asserted beyond that bound.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mrq.supervisor import CHILD_ENV
from mrq.testing import FAST_WORKER_ENV, ServerURLs

CASE_ENV = "MRQ_TEST_SIGNAL_CASE"
#: Seconds within which every process of a case must be gone after its signal: no job runs, so this is only
#: start-up plus shutdown, on a loaded machine.
BOUND = 60.0
DELAYS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _marked(case: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``case`` (wherever they were reparented)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(CASE_ENV) == case and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _describe(proc: psutil.Process) -> str:
    try:
        status = {k: v.strip() for k, v in (line.split(":", 1) for line in
                  Path(f"/proc/{proc.pid}/status").read_text().splitlines()) if k in ("SigBlk", "SigCgt")}
        return f"pid {proc.pid} {' '.join(proc.cmdline())[-70:]!r} {status}"
    except (OSError, psutil.Error):
        return f"pid {proc.pid} (gone)"


class Case:
    """One ``mrq-worker`` start and one signal ``delay`` seconds after it."""

    def __init__(self, urls: ServerURLs, cwd: str, out: Path, prefix: str, sig: int, delay: float,
                 processes: int, config: str | None = None) -> None:
        self.case = uuid.uuid4().hex
        self.sig, self.delay, self.processes = sig, delay, processes
        self.out = out
        args = [sys.executable, "-m", "mrq.cli", "worker"] + (["--processes", str(processes)] if processes else [])
        if config:
            args += ["--config", config]
        env = dict(os.environ, **FAST_WORKER_ENV, MRQ_REDIS=urls.redis, MRQ_MONGODB_JOBS=urls.mongodb,
                   MRQ_REDIS_PREFIX=prefix, PYTHONUNBUFFERED="1", **{CASE_ENV: self.case})
        env.pop(CHILD_ENV, None)
        self.args, self.env, self.cwd = args, env, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        mode = f"--processes {self.processes}" if self.processes else "alone"
        return f"<{signal.Signals(self.sig).name} {self.delay} s after start, {mode}>"

    def start(self) -> None:
        with self.out.open("ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def send(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(self.sig)

    def left(self) -> list[psutil.Process]:
        assert self.proc is not None
        self.proc.poll()  # reap it, so that it does not count as alive
        return _marked(self.case)

    def kill(self) -> None:
        for proc in self.left():
            try:
                proc.kill()
            except psutil.Error:
                pass
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def run_cases(cases: list[Case], batch: int = 4) -> list[str]:
    """Run the cases, ``batch`` at a time; return a description of each one that left a process behind."""
    failures: list[str] = []
    for start in range(0, len(cases), batch):
        group = cases[start:start + batch]
        try:
            begun = time.monotonic()
            for case in group:
                case.start()
            timers = [threading.Timer(max(0.0, case.delay - (time.monotonic() - begun)), case.send) for case in group]
            for timer in timers:
                timer.start()
            for timer in timers:
                timer.join()
            deadline = time.monotonic() + BOUND
            pending = list(group)
            while pending and time.monotonic() < deadline:
                pending = [case for case in pending if case.left()]
                time.sleep(0.2)
            for case in pending:
                tail = case.out.read_text(errors="replace")[-1500:]
                failures.append(f"{case!r}: still running {BOUND:.0f} s after the signal: "
                                f"{[_describe(p) for p in case.left()]}\n--- its output ends with:\n{tail}")
        finally:
            for case in group:
                case.kill()
    return failures


@pytest.fixture
def fresh_prefix() -> str:
    """A Redis key prefix no worker used: MRQ's marker key is missing, the workers take the data-lost path."""
    return f"sig-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def used_prefix(mrq_urls: ServerURLs, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A Redis key prefix a worker has run on (and stopped): MRQ's marker key is there."""
    prefix = f"sig-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, **FAST_WORKER_ENV, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb,
               MRQ_REDIS_PREFIX=prefix)
    env.pop(CHILD_ENV, None)
    subprocess.run([sys.executable, "-m", "mrq.cli", "worker", "--dequeue_strategy", "burst"], env=env,
                   cwd=str(request.config.rootpath), check=True, timeout=120, capture_output=True,
                   start_new_session=True)
    return prefix


@pytest.fixture
def case_factory(mrq_urls: ServerURLs, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Case] = []

    def make(prefix: str, sig: int, delay: float, processes: int = 0, config: str | None = None) -> Case:
        case = Case(mrq_urls, str(request.config.rootpath), tmp_path / f"case{len(made)}.log", prefix, sig, delay,
                    processes, config)
        made.append(case)
        return case

    yield make
    for case in made:
        case.kill()


SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("redis_state", ["fresh", "used"])
@pytest.mark.parametrize("processes", [0, 2], ids=["alone", "processes2"])
def test_a_signal_at_any_point_of_start_up_stops_every_process(case_factory, fresh_prefix, request, sig,
                                                               redis_state, processes):
    prefix = fresh_prefix if redis_state == "fresh" else request.getfixturevalue("used_prefix")
    cases = [case_factory(prefix if redis_state == "used" else f"{prefix}-{i}", sig, delay, processes)
             for i, delay in enumerate(DELAYS)]
    failures = run_cases(cases)
    assert not failures, "\n\n".join(failures)


# A signal that Python's default SIGINT handler turns into KeyboardInterrupt inside a finalizer is lost ("Exception
# ignored in ..."): what happened to workers stopped while they loaded (in an import, in gevent's monkey-patching).
# A config file is loaded during start-up: it makes the moment deterministic.
FINALIZER_CONFIG = """
import os, signal, time


class _Late:
    def __del__(self):
        os.kill(os.getpid(), signal.{sig})
        time.sleep(0.3)  # Python's default SIGINT handler raises KeyboardInterrupt here: inside a finalizer


_Late()
"""


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_received_inside_a_finalizer_during_start_up_is_not_lost(case_factory, fresh_prefix, tmp_path,
                                                                          sig):
    config = tmp_path / "mrq-config.py"
    config.write_text(FINALIZER_CONFIG.replace("{sig}", signal.Signals(sig).name))
    case = case_factory(fresh_prefix, sig, 3600.0, config=str(config))  # the config sends the signal itself
    case.start()
    assert case.proc is not None
    try:
        code = case.proc.wait(BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker ignored the {signal.Signals(sig).name} it got while loading its config:\n"
                    + case.out.read_text(errors="replace")[-2000:])
    assert code in (0, -sig), case.out.read_text(errors="replace")
    assert "Exception ignored" not in case.out.read_text(errors="replace")


# Under --processes, the stop of the wrapper reaches a child while it loads: the first child waits in a finalizer
# until the test has sent SIGINT to the wrapper (which has supervisord send SIGINT to every child).
SLOW_CHILD_CONFIG = """
import os, time

MARK = {mark!r}
if os.environ.get("MRQ_SUPERVISED") and os.environ.get("MRQ_PROCESS_NUM") == "0" and not os.path.exists(MARK):
    class _Slow:
        def __del__(self):
            open(MARK, "w").close()
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:  # the SIGINT of the stop comes in here
                time.sleep(0.05)

    _Slow()
"""


def test_under_processes_a_child_stopped_while_it_loads_stops(case_factory, fresh_prefix, tmp_path):
    mark = tmp_path / "loading"
    config = tmp_path / "mrq-config.py"
    config.write_text(SLOW_CHILD_CONFIG.format(mark=str(mark)))
    case = case_factory(fresh_prefix, signal.SIGINT, 3600.0, processes=2, config=str(config))
    case.start()
    deadline = time.monotonic() + BOUND
    while not mark.exists():
        assert time.monotonic() < deadline, "the first child never loaded its config"
        time.sleep(0.02)
    case.send()
    deadline = time.monotonic() + BOUND
    while case.left() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = case.left()
    assert not left, (f"still running {BOUND:.0f} s after SIGINT: {[_describe(p) for p in left]}\n"
                      + case.out.read_text(errors="replace")[-3000:])
    assert case.proc is not None and case.proc.returncode == 0
