"""Every code block of the README runs as written: the two task modules, the enqueuing code, the worker command."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

from mrq.job import Job, queue_job
from mrq.testing import FAST_WORKER_ENV, PREFIX_ENV, kill_process_group
from wf_helpers import HERE, wf_config_fixture

wf_config_ = wf_config_fixture  # the fixture "wf_config" of this module

README = HERE.parent / "README.md"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", README.read_text(), re.S)


def test_every_block_as_written(wf_config, mrq_urls, tmp_path, monkeypatch):
    found = blocks()
    assert [lang for lang, _ in found] == ["python", "python", "sh", "python"]
    crawl_tasks, enqueue, command, payment_tasks = (code for _, code in found)
    (tmp_path / "crawl_tasks.py").write_text(crawl_tasks)
    (tmp_path / "payment_tasks.py").write_text(payment_tasks)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = dict(os.environ, **FAST_WORKER_ENV, MRQ_REDIS=mrq_urls.redis, MRQ_MONGODB_JOBS=mrq_urls.mongodb)
    if mrq_urls.prefix:
        env[PREFIX_ENV] = mrq_urls.prefix
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen(["bash", "-c", "exec " + command.strip()], cwd=str(tmp_path), env=env,
                            start_new_session=True)
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(enqueue, "README.md", "exec"), {})
        pages = sum(len(f"https://example.com/{n}") for n in range(20))
        assert out.getvalue().strip() == str(pages + 20)  # the pages, and the crawl (its result: 20 pages)
        pay = queue_job("payment_tasks.Pay", {"amount": 10})
        assert Job(pay).wait(timeout=30) == "shipped after charged 10"
        assert set(Job(pay).fetch().data["wf_steps"]) == {"charge", "ship"}
    finally:
        kill_process_group(proc.pid)
        proc.wait()
