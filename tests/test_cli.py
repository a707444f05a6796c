"""mrq-run and mrq-worker as a user runs them: real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def test_version(mrq_urls, pytestconfig):
    out = run(["worker", "--version"], mrq_urls, pytestconfig.rootpath)
    assert out.returncode == 0 and out.stdout.startswith("MRQ ")


def test_cli_imports_no_client_library_before_patching():
    code = ("import sys, mrq, mrq.cli; bad = [m for m in sys.modules if m.split('.')[0] in ('pymongo', 'redis')];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
