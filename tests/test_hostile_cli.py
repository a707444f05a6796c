"""Hostile ``mrq-run`` and ``mrq-worker`` arguments, property-based: whatever the arguments, the command ends with
code 0 (done), 1 (the task failed: its traceback) or 2 (a one-line ``error:`` message, no traceback).

Each hypothesis example is a batch of command lines, run by one process that calls ``run_main`` for each (a process
per command line would cost a second each); the regression tests run the real console scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

T = "tests.tasks.general."

DRIVER = """
import contextlib, io, json, sys, traceback
from mrq import cli
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.run_main(argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        code = "uncaught " + traceback.format_exc()
    results.append([argv, code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""

JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                        max_size=3), max_leaves=6)
WORDS = st.text(max_size=6) | st.sampled_from([
    "-", "--", "-x", "--nope", "{", "[1]", "null", "NaN", '{"a": NaN}', '{"a": 1e999}', '{"a": Infinity}',
    "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, '{"\\ud800": 1}', "\udcff", "a b", "=", "a=b",
])
PATHS = st.sampled_from([T + "add", T + "Add", T + "noop", T + "Nope", "tests.tasks.nope.X", ".x", "x", "",
                         "tests.tasks.exits_on_import.X", "tests.tasks.raises_on_import.X", "-h", "\udcff.x"])
FLAGS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["--queue", "--delay", "--redis", "--mongodb_jobs", "--config", "--log_level",
                               "--redis_prefix", "--default_job_timeout", "--greenlets", "--name"]),
              WORDS | st.sampled_from(["q", "0", "-1", "nan", "1e999", "redis://[::1", "mongodb://h/a b"]))
    .map(lambda kv: [f"{kv[0]}={kv[1]}"]),
    st.sampled_from([["--async"], ["--no-async"], ["--quiet"], ["--version"]])), max_size=2)
ARGV = st.builds(lambda flags, path, params: [f for pair in flags for f in pair] + [path, *params], FLAGS, PATHS,
                 st.lists(WORDS | JSON_VALUE.map(lambda v: json.dumps(v)), max_size=3))


def _env(urls: Any) -> dict[str, str]:
    return dict(os.environ, MRQ_REDIS=urls.redis, MRQ_MONGODB_JOBS=urls.mongodb, PYTHONUNBUFFERED="1")


def assert_clean_exit(argv: list[str], code: Any, err: str) -> None:
    assert code in (0, 1, 2, None), f"{argv!r}: {code}"
    if code == 2:
        assert "\nmrq-run: error: " in "\n" + err, f"{argv!r}: {err[-2000:]}"  # after argparse's usage, if any
        assert "Traceback" not in err, f"{argv!r}: {err[-3000:]}"


@settings(max_examples=6, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],  # no shrinking:

          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,  # a batch names
                                 HealthCheck.data_too_large])                                   # its bad argv
@given(batch=st.lists(ARGV, min_size=25, max_size=25))
def test_any_mrq_run_arguments(mrq_urls, pytestconfig, batch):
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(batch), capture_output=True, text=True,
                          env=_env(mrq_urls), cwd=pytestconfig.rootpath, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for argv, code, _out, err in json.loads(proc.stdout.splitlines()[-1]):
        assert_clean_exit(argv, code, err)


def _script(name: str, args: list[str], urls: Any, cwd: Any) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=_env(urls), cwd=cwd, timeout=60)


@pytest.mark.parametrize("script, args, words", [
    # Found by hypothesis: json.loads of deeply nested params raised RecursionError (a traceback).
    ("mrq-run", [T + "add", "[" * 5000 + "]" * 5000], "nested"),
    ("mrq-run", [".x", "{}"], "empty part"),                                  # was ValueError: Empty module name
    ("mrq-run", ["--async", T + "add", '{"a": 1e999, "b": "' + "x" * 10 + '"}'], "exit"),
    ("mrq-run", ["--queue=a b", T + "add", "{}"], "Queue name 'a b' is invalid"),
    ("mrq-worker", ["--greenlets=1e999"], "greenlets"),
    ("mrq-worker", ["a b"], "Queue name 'a b' is invalid"),                    # was a worker on an unusable queue
    ("mrq-worker", ["--redis_prefix=}"], "redis_prefix"),
    ("mrq-worker", ["--redis=redis://[::1"], "--redis"),                      # was ValueError: Invalid IPv6 URL
    ("mrq-worker", ["--mongodb_jobs=mongodb://h/a%00b"], "--mongodb_jobs"),   # was InvalidName
])
def test_found_by_hypothesis_exit_2_with_one_line(mrq_urls, pytestconfig, script, args, words):
    proc = _script(script, args, mrq_urls, pytestconfig.rootpath)
    if words == "exit":  # accepted: inf is stored as a float, the job queued
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and proc.stderr.count("\n") <= 2 and "Traceback" not in proc.stderr, proc.stderr
