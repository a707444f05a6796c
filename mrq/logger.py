"""Per-job logs: lines logged by task code are buffered per job and stored in ``mrq_logs`` in batches.

``log.info(...)`` in a task (``from mrq.context import log``) lands in a
document ``{job: <id>, worker: <id>, logs: "lines", date}``; :func:`job_logs`
reads them back in order.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from bson import ObjectId

__all__ = ["JobLogHandler", "job_logs", "ensure_logs_collection", "LOGS"]

LOGS = "mrq_logs"


class JobLogHandler(logging.Handler):
    """Buffers the records of the current job; :meth:`flush_to` writes them in one ``insert_many``."""

    def __init__(self, worker_id: Any = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.worker_id = worker_id
        self._buffer: dict[Any, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        from mrq.context import get_current_job

        job = get_current_job()
        if job is None or job.id is None:
            return
        if isinstance(record.msg, bytes):
            record.msg = record.msg.decode("utf-8", "replace")
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - never let a log line break a job
            line = f"{record.levelname}: {record.msg!r} (unformattable: {record.args!r})"
        self._buffer.setdefault(job.id, []).append(line)

    def pending(self) -> int:
        return len(self._buffer)

    def flush_to(self, database: Any) -> None:
        """Insert the buffered lines (one document per job); on failure they are kept for the next try."""
        if not self._buffer or database is None:
            self._buffer.clear() if database is None else None
            return
        buffer, self._buffer = self._buffer, {}
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        docs = [{"job": job_id, "worker": self.worker_id, "date": now, "logs": "\n".join(lines)}
                for job_id, lines in buffer.items()]
        try:
            database[LOGS].insert_many(docs, ordered=False)
        except Exception:
            for job_id, lines in buffer.items():
                self._buffer.setdefault(job_id, [])[:0] = lines
            raise


def ensure_logs_collection(database: Any, size: int) -> None:
    """Create ``mrq_logs`` (capped at ``size`` bytes unless 0) and its index, idempotently."""
    if database is None:
        return
    if LOGS not in database.list_collection_names():
        try:
            if size:
                database.create_collection(LOGS, capped=True, size=size)
            else:
                database.create_collection(LOGS)
        except Exception:  # noqa: BLE001 - created concurrently by another worker
            pass
    database[LOGS].create_index([("job", 1)])


def job_logs(job_id: ObjectId | str, database: Any = None) -> str:
    """Every stored log line of a job, oldest first."""
    from mrq.context import connections

    database = connections.mongodb_logs if database is None else database
    if database is None:
        return ""
    cursor = database[LOGS].find({"job": ObjectId(job_id)}, {"logs": 1}).sort("_id", 1)
    return "\n".join(d["logs"] for d in cursor)
