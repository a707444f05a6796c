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


class _Logged:
    """A logger bound to a handler, and a way to log as a given job."""

    def __init__(self, handler: JobLogHandler) -> None:
        self.logger = logging.getLogger("test.mrq.logger.limits")
        self.logger.addHandler(handler)
        self.logger.setLevel(logging.INFO)
        self.handler = handler

    def line(self, job: Job, text: str) -> None:
        set_current_job(job)
        try:
            self.logger.info(text)
        finally:
            set_current_job(None)

    def close(self) -> None:
        self.logger.removeHandler(self.handler)


def test_an_oversized_line_is_cut_and_blocks_nothing(mrq_config):
    """A 20 MB line (over MongoDB's 16 MB document limit) is cut, says so, and every job's log is stored once."""
    db = connections.mongodb_jobs
    handler = JobLogHandler()
    logged = _Logged(handler)
    small, big = Job(ObjectId()), Job(ObjectId())
    try:
        logged.line(small, "small job line")
        logged.line(big, "x" * (20 * 1024 * 1024))
        logged.line(small, "second line")
        handler.flush_to(db)
        handler.flush_to(db)
        assert job_logs(small.id) == "small job line\nsecond line"
        stored = job_logs(big.id)
        assert len(stored) < 70 * 1024 and "more characters cut" in stored
        assert handler.truncated == 1 and handler.dropped == 0 and handler.pending() == 0
    finally:
        logged.close()


def test_a_long_log_is_split_into_documents(mrq_config, monkeypatch):
    from mrq import logger as logger_module

    monkeypatch.setattr(logger_module, "MAX_DOCUMENT", 100)
    db = connections.mongodb_jobs
    handler = JobLogHandler()
    logged = _Logged(handler)
    job = Job(ObjectId())
    try:
        for i in range(30):
            logged.line(job, f"line {i:02d} " + "." * 20)
        handler.flush_to(db)
        assert db[LOGS].count_documents({"job": job.id}) > 5
        assert job_logs(job.id).splitlines() == [f"line {i:02d} " + "." * 20 for i in range(30)]
    finally:
        logged.close()


class _LostAnswer:
    """A database whose inserts reach MongoDB but whose answer is lost (a connection cut after the write)."""

    def __init__(self, db) -> None:
        self.db = db
        self.fail = True

    def __getitem__(self, name):
        outer = self

        class Collection:
            def insert_many(self, docs, ordered=True):
                outer.db[name].insert_many(docs, ordered=ordered)
                if outer.fail:
                    import pymongo.errors
                    raise pymongo.errors.AutoReconnect("connection closed after the write")

        return Collection()


def test_a_retry_after_a_lost_answer_stores_no_line_twice(mrq_config):
    db = connections.mongodb_jobs
    handler = JobLogHandler()
    logged = _Logged(handler)
    job = Job(ObjectId())
    flaky = _LostAnswer(db)
    try:
        logged.line(job, "only once")
        try:
            handler.flush_to(flaky)
        except Exception as exc:  # noqa: BLE001
            assert "connection closed" in str(exc)
        assert handler.pending() == 1  # kept: the handler cannot know it was stored
        logged.line(job, "then this")
        flaky.fail = False
        handler.flush_to(flaky)
        assert handler.pending() == 0
        assert job_logs(job.id) == "only once\nthen this"
    finally:
        logged.close()


def test_the_buffer_is_capped_and_drops_the_oldest_lines(mrq_config, monkeypatch):
    from mrq import logger as logger_module

    monkeypatch.setattr(logger_module, "MAX_BUFFER", 1000)
    handler = JobLogHandler()
    logged = _Logged(handler)
    job = Job(ObjectId())
    try:
        for i in range(100):  # 100 lines of 100 characters: 10x the cap
            logged.line(job, f"{i:03d}" + "." * 97)
        assert handler.dropped == 90
        handler.flush_to(connections.mongodb_jobs)
        lines = job_logs(job.id).splitlines()
        assert [line[:3] for line in lines] == [f"{i:03d}" for i in range(90, 100)]  # the newest are kept
    finally:
        logged.close()


class _Refusing:
    """A database that refuses one job's log documents (an error about the document, not an outage)."""

    def __init__(self, db, refused_job) -> None:
        self.db = db
        self.refused_job = refused_job
        self.tries = 0

    def __getitem__(self, name):
        outer = self

        class Collection:
            def insert_many(self, docs, ordered=True):
                import pymongo.errors
                bad = [i for i, d in enumerate(docs) if d["job"] == outer.refused_job]
                others = [d for d in docs if d["job"] != outer.refused_job]
                if others:
                    outer.db[name].insert_many(others, ordered=ordered)
                if bad:
                    outer.tries += 1
                    raise pymongo.errors.BulkWriteError({"writeErrors": [
                        {"index": i, "code": 2, "errmsg": "document refused"} for i in bad]})

        return Collection()


def test_a_refused_document_is_tried_three_times_then_dropped_and_counted(mrq_config):
    db = connections.mongodb_jobs
    handler = JobLogHandler()
    logged = _Logged(handler)
    good, bad = Job(ObjectId()), Job(ObjectId())
    refusing = _Refusing(db, bad.id)
    try:
        logged.line(bad, "refused line 1")
        logged.line(bad, "refused line 2")
        logged.line(good, "stored line")
        for _ in range(5):
            try:
                handler.flush_to(refusing)
            except Exception:  # noqa: BLE001 - raised while the refused document is kept for a retry
                pass
        assert refusing.tries == 3
        assert handler.pending() == 0 and handler.dropped == 2
        assert job_logs(good.id) == "stored line" and job_logs(bad.id) == ""
    finally:
        logged.close()
