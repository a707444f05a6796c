"""Per-job logs: lines logged by task code are buffered per job and stored in ``mrq_logs`` in batches.

``log.info(...)`` in a task (``from mrq.context import log``) lands in a
document ``{job: <id>, worker: <id>, logs: "lines", date}``; :func:`job_logs`
reads them back in order.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

import pymongo.errors
from bson import ObjectId

__all__ = ["JobLogHandler", "job_logs", "ensure_logs_collection", "LOGS", "MAX_LINE", "MAX_DOCUMENT", "MAX_BUFFER"]

LOGS = "mrq_logs"
log = logging.getLogger("mrq.logger")


#: Longest log line stored, in characters; a longer line is cut and says so.
MAX_LINE = 64 * 1024
#: Most characters of one stored document; a job's lines beyond it go to further documents.
MAX_DOCUMENT = 1024 * 1024
#: Most characters waiting to be stored (lines and documents not yet written, during an outage); past it the
#: oldest are dropped and counted.
MAX_BUFFER = 32 * 1024 * 1024
#: Tries of a document that MongoDB refuses (not an outage: an error about the document itself).
_MAX_ATTEMPTS = 3
_DUPLICATE_KEY = 11000


@dataclass
class _Unsent:
    doc: dict[str, Any]
    lines: int
    chars: int
    attempts: int = 0


class JobLogHandler(logging.Handler):
    """Buffers the records of the running jobs; :meth:`flush_to` stores them with one ``insert_many``.

    Each document gets its ``_id`` when it is built and is kept until MongoDB confirms it: a retry after an
    outage stores only what was not stored (a document stored already fails as a duplicate key, which counts
    as stored), never a line twice. Lines longer than :data:`MAX_LINE` are cut, a job's text is split into
    documents of at most :data:`MAX_DOCUMENT` characters, and at most :data:`MAX_BUFFER` characters wait:
    ``dropped`` and ``truncated`` count the lines lost or cut.
    """

    def __init__(self, worker_id: Any = None, level: int = logging.NOTSET, plugins: Any = None) -> None:
        super().__init__(level)
        self.worker_id = worker_id
        #: the hook ``mrq_job_log_fields`` when a plugin implements it (fields appended to each line), else None
        self.fields_hook: Any = None
        if plugins is not None:
            caller = plugins.hook.mrq_job_log_fields
            self.fields_hook = caller if caller.get_hookimpls() else None
        self._buffer: dict[Any, list[str]] = {}
        self._unsent: list[_Unsent] = []
        self._chars = 0  # characters in _buffer and _unsent
        self.dropped = 0
        self.truncated = 0

    def emit(self, record: logging.LogRecord) -> None:
        from mrq.runtime import get_current_job

        job = get_current_job()
        if job is None or job.id is None:
            return
        if isinstance(record.msg, bytes):
            record.msg = record.msg.decode("utf-8", "replace")
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - never let a log line break a job
            line = f"{record.levelname}: {record.msg!r} (unformattable: {record.args!r})"
        if self.fields_hook is not None:
            line += self._fields(job)
        if len(line) > MAX_LINE:
            line = (line[:MAX_LINE] + f" [... {len(line) - MAX_LINE} more characters cut: MRQ stores log lines "
                    f"of at most {MAX_LINE} characters]")
            self.truncated += 1
        self._buffer.setdefault(job.id, []).append(line)
        self._chars += len(line)
        if self._chars > MAX_BUFFER:
            self._drop_oldest()

    def _fields(self, job: Any) -> str:
        """`` name=value`` of the fields plugins add to the job's lines (``mrq_job_log_fields``)."""
        try:
            return "".join(f" {k}={v}" for fields in self.fields_hook(job=job) if fields for k, v in fields.items())
        except Exception:  # noqa: BLE001 - a plugin's error never loses the line
            return ""

    def pending(self) -> int:
        """Jobs with lines waiting, plus documents waiting to be stored."""
        return len(self._buffer) + len(self._unsent)

    def _drop_oldest(self) -> None:
        while self._chars > MAX_BUFFER and self._unsent:
            entry = self._unsent.pop(0)
            self._chars -= entry.chars
            self.dropped += entry.lines
        while self._chars > MAX_BUFFER and self._buffer:
            job_id, lines = next(iter(self._buffer.items()))
            line = lines.pop(0)
            self._chars -= len(line)
            self.dropped += 1
            if not lines:
                del self._buffer[job_id]

    def _documents(self) -> list[_Unsent]:
        """Turn the buffered lines into documents (at most MAX_DOCUMENT characters each), in order."""
        buffer, self._buffer = self._buffer, {}
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        out: list[_Unsent] = []
        for job_id, lines in buffer.items():
            start = 0
            while start < len(lines):
                end, size = start, 0
                while end < len(lines) and (end == start or size + len(lines[end]) + 1 <= MAX_DOCUMENT):
                    size += len(lines[end]) + 1
                    end += 1
                text = "\n".join(lines[start:end])
                out.append(_Unsent({"_id": ObjectId(), "job": job_id, "worker": self.worker_id, "date": now,
                                    "logs": text}, end - start, sum(len(x) for x in lines[start:end])))
                start = end
        return out

    def flush_to(self, database: Any) -> None:
        """Store what is waiting. On an outage everything is kept for the next call (and the error raised);
        documents that MongoDB refuses are retried a few times, then dropped and counted."""
        if database is None:
            self._buffer.clear()
            self._unsent.clear()
            self._chars = 0
            return
        self._unsent.extend(self._documents())
        if not self._unsent:
            return
        batch, self._unsent = self._unsent, []
        self._chars -= sum(e.chars for e in batch)
        try:
            database[LOGS].insert_many([e.doc for e in batch], ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            failed = {e["index"]: e for e in exc.details.get("writeErrors", [])}
            keep = []
            for index, entry in enumerate(batch):
                error = failed.get(index)
                if error is None or error.get("code") == _DUPLICATE_KEY:
                    continue  # stored, now or by an earlier try whose answer was lost
                entry.attempts += 1
                if entry.attempts < _MAX_ATTEMPTS:
                    keep.append(entry)
                else:
                    self.dropped += entry.lines
                    log.error("Log document of job %s refused by MongoDB %d times (%s); %d line(s) dropped",
                              entry.doc["job"], entry.attempts, error.get("errmsg"), entry.lines)
            self._keep(keep)
            if keep:
                raise
        except BaseException:  # an outage, a timeout, a kill: keep the whole batch (its _ids make it idempotent)
            self._keep(batch)
            raise

    def _keep(self, entries: list[_Unsent]) -> None:
        self._unsent[:0] = entries
        self._chars += sum(e.chars for e in entries)
        if self._chars > MAX_BUFFER:
            self._drop_oldest()


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
    from mrq.runtime import connections

    database = connections.mongodb_logs if database is None else database
    if database is None:
        return ""
    cursor = database[LOGS].find({"job": ObjectId(job_id)}, {"logs": 1}).sort("_id", 1)
    return "\n".join(d["logs"] for d in cursor)
