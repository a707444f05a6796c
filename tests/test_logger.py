"""Per-job logs: buffered by job, stored in batches, read back in order."""

from __future__ import annotations

import logging

from bson import ObjectId

from mrq.context import connections, set_current_job
from mrq.job import Job
from mrq.logger import LOGS, JobLogHandler, ensure_logs_collection, job_logs


def test_lines_are_buffered_per_job_and_flushed_in_one_insert(mrq_config):
    db = connections.mongodb_jobs
    ensure_logs_collection(db, 1024 * 1024)
    assert db[LOGS].options().get("capped") is True
    handler = JobLogHandler(worker_id="w")
    logger = logging.getLogger("test.mrq.logger")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    jobs = [Job(ObjectId()), Job(ObjectId())]
    try:
        for i, job in enumerate(jobs):
            set_current_job(job)
            logger.info("line %d é", i)
            logger.info(b"bytes %r", {"k": 1})
        set_current_job(None)
        logger.info("outside any job: not stored")
        assert handler.pending() == 2
        handler.flush_to(db)
        assert handler.pending() == 0
        assert db[LOGS].count_documents({}) == 2
        assert job_logs(jobs[0].id) .endswith("bytes {'k': 1}")
        assert "line 1 é" in job_logs(str(jobs[1].id))
    finally:
        set_current_job(None)
        logger.removeHandler(handler)


def test_logs_disabled(mrq_urls):
    from mrq.context import setup_context
    setup_context(redis=mrq_urls.redis, mongodb_jobs=mrq_urls.mongodb, mongodb_logs="0")
    try:
        assert connections.mongodb_logs is None
        assert job_logs(ObjectId()) == ""
    finally:
        connections.reset()
