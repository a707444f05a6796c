"""The isolation that the ``mrq.testing`` pytest plugin promises (docs/testing.md), and its example, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil

from mrq.context import get_broker, get_current_config
from mrq.testing import OWNER_ENV, PREFIX_ENV

ROOT = Path(__file__).resolve().parent.parent


def _blocks(text: str) -> dict[str, str]:
    """The ```python blocks of a page, by the file name on their first line (``# tasks.py``)."""
    out = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            out[first[2:]] = block
    return out


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (PREFIX_ENV, OWNER_ENV)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(folder),
                           *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)


def test_the_docs_example_runs_as_written(tmp_path):
    blocks = _blocks((ROOT / "docs" / "testing.md").read_text())
    assert set(blocks) == {"tasks.py", "test_tasks.py"}
    for name, code in blocks.items():
        (tmp_path / name).write_text(code)
    result = _pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_workers_and_context_share_the_tests_own_prefix(mrq_urls, mrq_config, mrq_worker):
    assert mrq_urls.prefix != "mrq"
    assert os.environ[PREFIX_ENV] == mrq_urls.prefix
    assert get_current_config()["redis_prefix"] == mrq_urls.prefix
    mrq_worker.start()
    assert any(k.decode().startswith("{" + mrq_urls.prefix + "}") or k.decode().startswith(mrq_urls.prefix)
               for k in get_broker().redis.keys("*")), get_broker().redis.keys("*")
    assert mrq_worker.stop() == 0


def test_two_tests_get_different_prefixes(tmp_path):
    (tmp_path / "test_two.py").write_text(
        "import os\n"
        "SEEN = []\n"
        "def test_a(mrq_urls):\n    SEEN.append(mrq_urls.prefix)\n"
        "def test_b(mrq_urls):\n    SEEN.append(mrq_urls.prefix)\n    assert len(set(SEEN)) == 2\n"
        "    assert os.environ['MRQ_REDIS_PREFIX'] == mrq_urls.prefix\n")
    result = _pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


LEAKY = '''
import subprocess, sys


def test_leaves_a_process():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


def test_leaves_an_orphan():
    subprocess.run(["sh", "-c", "sleep 600 &"], check=True)


def test_clean():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


def test_a_test_that_leaves_a_process_fails_the_run_and_is_named(tmp_path):
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmrq_leftover_grace = 0.2\n")
    result = _pytest(tmp_path)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "3 passed" in out  # the tests themselves pass: the run fails for them
    assert "processes left running by tests" in out
    assert re.search(r"test_leaky.py::test_leaves_a_process left 1 process\(es\) running: pid \d+ .*sleep\(600\)", out)
    assert re.search(r"test_leaky.py::test_leaves_an_orphan left 1 process\(es\) running: pid \d+ 'sleep 600'", out)
    assert "test_clean left" not in out
    for pid in re.findall(r"running: pid (\d+)", out):  # killed
        assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE

    (tmp_path / "pytest.ini").write_text("[pytest]\nmrq_leftover_processes = warn\nmrq_leftover_grace = 0.2\n")
    result = _pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_leaves_a_process left 1 process" in result.stdout
