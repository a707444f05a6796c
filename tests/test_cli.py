"""mrq-run and mrq-worker as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mrq.job import Job

T = "tests.tasks.general."


def run(args, urls, cwd, **kw):
    env = dict(os.environ, MRQ_REDIS=urls.redis, MRQ_MONGODB_JOBS=urls.mongodb)
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60, **kw)


def test_run_in_process(mrq_urls, pytestconfig):
    out = run(["run", T + "Add", '{"a": 41, "b": 1}'], mrq_urls, pytestconfig.rootpath)
    assert (out.returncode, out.stdout.strip()) == (0, "42"), out.stderr
    out = run(["run", T + "add", "a", "x", "b", "y"], mrq_urls, pytestconfig.rootpath)
    assert out.stdout.strip() == '"xy"'


def test_run_errors(mrq_urls, pytestconfig):
    out = run(["run", T + "Fail", "{}"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 1 and "ValueError: boom" in out.stderr
    out = run(["run", T + "Nope", "{}"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 2 and "has no 'Nope'" in out.stderr
    out = run(["run", T + "Add", "{not json"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = run(["run", T + "Add", "[1]"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 2 and "must be a JSON object" in out.stderr


def test_run_async_and_wait(mrq_urls, mrq_worker, pytestconfig):
    out = run(["run", "--async", T + "Add", '{"a": 1, "b": 2}'], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert Job(job_id).fetch().status == "queued"
    mrq_worker.start()
    out = run(["run", "--queue", "default", "--wait", T + "Progress", '{"steps": 2}'], mrq_urls,
              pytestconfig.rootpath)
    assert (out.returncode, json.loads(out.stdout)) == (0, "done"), out.stderr
    assert Job(job_id).fetch().data["result"] == 3
    out = run(["run", "--async", "--wait", T + "Fail", "{}"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 1 and "status failed" in out.stderr


def test_worker_bad_config_exits_2(mrq_urls, pytestconfig):
    out = run(["worker", "--greenlets", "many"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 2
    assert "greenlets" in out.stderr and "'many' is not a valid int" in out.stderr
    out = run(["worker", "--redis", "http://nope"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 2 and "is not a Redis URI" in out.stderr
    out = run(["worker", "--redis", "redis+cluster://127.0.0.1:7000/0"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 2 and "a Redis Cluster has only database 0" in out.stderr


def test_version(mrq_urls, pytestconfig):
    out = run(["worker", "--version"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 0 and out.stdout.startswith("MRQ ")


def test_cli_imports_no_client_library_before_patching():
    code = ("import sys, mrq, mrq.cli; bad = [m for m in sys.modules if m.split('.')[0] in ('pymongo', 'redis')];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# -- every console script: --help, no arguments, a bad argument ----------------------------------------------

SCRIPTS = ("mrq-worker", "mrq-run", "mrq-plugins", "mrq-embedded")


def script(name: str, *args: str, cwd, urls=None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run an installed console script (the entry point a user types), in ``cwd``."""
    from pathlib import Path

    env = dict(os.environ)
    if urls is not None:
        env.update(MRQ_REDIS=urls.redis, MRQ_MONGODB_JOBS=urls.mongodb)
    return subprocess.run([str(Path(sys.executable).parent / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_help(name, tmp_path):
    out = script(name, "--help", cwd=tmp_path)
    assert out.returncode == 0 and "usage: " + name in out.stdout, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_script_bad_argument(name, tmp_path):
    out = script(name, "--no-such-option", cwd=tmp_path)
    assert out.returncode == 2, out
    assert "unrecognized arguments: --no-such-option" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / ".mrq").exists()  # mrq-embedded started no server before failing


def test_embedded_help_after_other_options(tmp_path):
    out = script("mrq-embedded", "--greenlets", "3", "--help", cwd=tmp_path)
    assert out.returncode == 0 and "mrq-worker --help" in out.stdout, out.stderr
    assert not (tmp_path / ".mrq").exists()


@pytest.mark.parametrize("args, message", [
    (("--greenlets", "x"), "'x' is not a valid int"),
    (("--log_format", "%(foo"), "Bad value for option 'log_format'"),
    (("--log_format", "%(nofield)s"), "names a field that log records do not have"),
    (("--plugins", "os:Missing"), "module 'os' has no attribute 'Missing'"),
    (("--plugins", "nosuchplugin"), "Unknown plugin 'nosuchplugin'"),
])
@pytest.mark.parametrize("name", ("mrq-worker", "mrq-embedded"))
def test_console_script_bad_values_exit_2_with_a_message(name, args, message, tmp_path):
    out = script(name, *args, cwd=tmp_path)
    assert out.returncode == 2, out
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / ".mrq").exists()


def test_console_scripts_without_arguments(mrq_urls, mrq_worker, tmp_path):
    out = script("mrq-run", cwd=tmp_path, urls=mrq_urls)
    assert out.returncode == 2 and "give a task path" in out.stderr
    out = script("mrq-plugins", cwd=tmp_path, urls=mrq_urls)
    assert out.returncode == 0 and "Traceback" not in out.stderr
    mrq_worker.start(queues=())  # mrq-worker alone: a worker on the 'default' queue
    assert mrq_worker.report()["queues"] == ["default"]
    assert mrq_worker.stop() == 0
