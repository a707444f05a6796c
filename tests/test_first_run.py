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


