"""Jobs: enqueue (``queue_job``/``queue_jobs``), read, wait, cancel, requeue, and run one.

A job is a document of ``mrq_jobs`` (its params, status, result, traceback...)
and, while it waits, its id in a Redis list. ``queue_jobs`` inserts the
documents in bulk, then pushes the ids in one atomic Redis step.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import random
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bson
import gevent
import pymongo.errors
from bson import ObjectId

from mrq import status as st
from mrq.exceptions import (
    InvalidParams,
    JobInterrupt,
    JobNotFound,
    MRQError,
    MrqInterrupt,
    RetryInterrupt,
    TimeoutInterrupt,
)
from mrq.task import MAX_PARAMS_BYTES, KernelHooks  # noqa: F401 - KernelHooks: its home is mrq.task

if TYPE_CHECKING:
    from mrq.config import RawQueueSettings
    from mrq.task import TaskSettings
    from mrq.worker import Worker

__all__ = ["Job", "queue_job", "queue_jobs", "job_id_for", "get_job_result", "Outcome", "RawJob", "JOBS", "utcnow"]

JOBS = "mrq_jobs"
_DUPLICATE_KEY = 11000


def utcnow() -> datetime.datetime:
    """Naive UTC now, with MongoDB's millisecond precision."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _jobs_collection() -> Any:
    from mrq.runtime import connections
    return connections.mongodb_jobs[JOBS]


#: Deepest nesting of params (dicts and lists): MongoDB refuses documents nested deeper than 100 levels.
MAX_PARAMS_DEPTH = 90


def _depth(value: Any) -> int:
    """Nesting depth of dicts and lists (1 for a flat dict), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, Mapping) else item if isinstance(item, (list, tuple)) else None
        if children is not None:
            deepest = max(deepest, level)
            if level <= MAX_PARAMS_DEPTH:
                stack.extend((child, level + 1) for child in children)
    return deepest


def _check_params(path: str, params_list: Sequence[Any]) -> None:
    for i, params in enumerate(params_list):
        if not isinstance(params, Mapping):
            raise InvalidParams(f"Params #{i} of task {path!r} must be a dict, not {type(params).__name__}: "
                                f"{params!r:.100}.")
        if _depth(params) > MAX_PARAMS_DEPTH:
            raise InvalidParams(f"Params #{i} of task {path!r} are nested more than {MAX_PARAMS_DEPTH} levels deep: "
                                "MongoDB refuses such documents. Flatten them.")
        try:
            size = len(bson.encode({"params": params}))
        except (bson.errors.InvalidDocument, OverflowError, TypeError, ValueError) as exc:  # UnicodeError is a
            raise InvalidParams(                                                           # ValueError
                f"Params #{i} of task {path!r} cannot be stored in MongoDB: {exc}. Use JSON-like values "
                "(dict with str keys, list, str, int, float, bool, None, datetime, ObjectId).") from None
        if size > MAX_PARAMS_BYTES:
            raise InvalidParams(
                f"Params #{i} of task {path!r} are {size / 2**20:.1f} MiB in BSON: a job's params must fit in "
                f"{MAX_PARAMS_BYTES // 2**20} MiB (MongoDB stores at most 16 MiB per job document, with its status, "
                "result and traceback). Store big data elsewhere (GridFS, a file, a bucket) and pass its reference.")


def job_id_for(unique_key: str) -> ObjectId:
    """The job id of a unique key: the same key always gives the same id (the first 12 bytes of its SHA-256), so
    ``queue_job(..., unique_key=key)`` queues at most one job per key while its document exists. Such an id's
    timestamp part means nothing."""
    if not isinstance(unique_key, str) or not unique_key:
        raise InvalidParams(f"unique_key must be a non-empty string, not {unique_key!r:.100}.")
    return ObjectId(hashlib.sha256(unique_key.encode("utf-8", "surrogatepass")).digest()[:12])


def _given_ids(job_ids: Sequence[Any], count: int) -> list[ObjectId]:
    if isinstance(job_ids, (str, bytes)) or not isinstance(job_ids, Sequence) or len(job_ids) != count:
        raise InvalidParams(f"job_ids must be a list with one id per params dict ({count}), not {job_ids!r:.100}.")
    out = []
    for value in job_ids:
        if isinstance(value, ObjectId):
            out.append(value)
        elif isinstance(value, str) and ObjectId.is_valid(value):
            out.append(ObjectId(value))
        else:
            raise InvalidParams(f"Job id {value!r:.60} is not an ObjectId nor its 24-hexadecimal-character string "
                                "(use mrq.job.job_id_for(key) to turn any string into one).")
    return out


def _insert_new(collection: Any, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert ``docs``; return those created, leaving out the ones whose id already existed (an atomic check
    per document, by MongoDB's unique ``_id``: among concurrent enqueuers of one id exactly one creates it)."""
    try:
        collection.insert_many(docs, ordered=False)
        return docs
    except pymongo.errors.BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != _DUPLICATE_KEY for e in errors):
            raise
        existing = {e["index"] for e in errors}
        return [d for i, d in enumerate(docs) if i not in existing]


def queue_jobs(path: str, params_list: Iterable[Mapping[str, Any]], queue: str | None = None,
               delay: float = 0, batch_size: int = 1000, job_ids: Sequence[ObjectId | str] | None = None,
               **options: Any) -> list[ObjectId]:
    """Enqueue one job per params dict; returns their ids.

    :param path: the task's dotted path (it need not be importable here).
    :param params_list: one dict per job, BSON-serialisable.
    :param queue: default: the task's ``TASKS`` queue (or class attribute), else ``default``.
    :param delay: seconds before the jobs may run.
    :param job_ids: ids chosen by the caller (ObjectIds or their hex strings), one per params dict: a job whose
        id already exists is not created nor queued again, and its id is returned all the same (exactly one of
        several concurrent enqueuers of an id creates it). If its document is still ``queued`` but its id is in
        no queue (an earlier call inserted it, then failed to push it and raised, or died), it is pushed, once:
        retrying a failed enqueue is safe.
    :param options: keyword arguments for plugins (``depends_on=[...]`` of the workflows plugin), handed to the
        hook ``mrq_jobs_enqueuing``; one that no enabled plugin takes is an ``InvalidParams``.
    :raises InvalidParams: before anything is written, if any params dict, id, option or the queue is unusable.

    Costs one ``insert_many`` and one Redis MULTI per ``batch_size`` jobs. A job a plugin holds back (a
    ``waiting`` status, see ``mrq_jobs_enqueuing``) is inserted, not pushed.
    """
    from mrq.broker import check_queue_name, queue_kind
    from mrq.runtime import get_broker, get_current_config, get_plugin_manager
    from mrq.task import task_path_problem, task_settings

    problem = task_path_problem(path)
    if problem:
        raise InvalidParams(problem + ".")
    params_list = list(params_list)
    _check_params(path, params_list)
    given = _given_ids(job_ids, len(params_list)) if job_ids is not None else None
    config = get_current_config()
    settings = task_settings(path, config)
    queue = check_queue_name(queue or settings.queue)
    if queue_kind(queue) != "r":
        raise InvalidParams(f"Queue {queue!r} is a raw queue (by its name): use mrq.raw.queue_raw_jobs for it.")
    delay = float(delay or 0)
    collection, broker, hook = _jobs_collection(), get_broker(), get_plugin_manager().hook
    ids: list[ObjectId] = []
    for start in range(0, len(params_list), batch_size):
        now = utcnow()
        chunk = params_list[start:start + batch_size]
        chunk_ids = given[start:start + batch_size] if given else [ObjectId() for _ in chunk]
        docs: list[dict[str, Any]] = [
            {"_id": i, "path": path, "params": dict(p), "queue": queue, "status": st.QUEUED,
             "datequeued": now, "dateupdated": now, "retry_count": 0,
             "dateexpires": now + datetime.timedelta(seconds=settings.default_ttl)}
            for i, p in zip(chunk_ids, chunk, strict=True)]
        if delay:
            for d in docs:
                d["datedue"] = now + datetime.timedelta(seconds=delay)
        left = dict(options)
        afters = [f for f in hook.mrq_jobs_enqueuing(path=path, queue=queue, docs=docs, options=left) if f]
        if left:
            raise InvalidParams(
                f"queue_jobs() got option(s) {sorted(left)} that no enabled plugin takes. Enable the plugin that "
                "provides them (depends_on: --plugins workflows, or PLUGINS = [\"workflows\"]), or check the "
                f"spelling. Enabled plugins: {get_current_config().get('plugins') or 'none'}.")
        held = {d["_id"] for d in docs if d["status"] != st.QUEUED}
        if held:
            bad = {d["status"] for d in docs if d["status"] not in st.WAITING_STATUSES and d["_id"] in held}
            if bad:
                raise InvalidParams(f"A plugin set the status of enqueued jobs to {sorted(bad)}: only a waiting "
                                    "status declared with mrq_job_statuses holds a job back.")
        if given:
            seen: set[ObjectId] = set()
            docs = [d for d in docs if not (d["_id"] in seen or seen.add(d["_id"]))]  # type: ignore[func-returns-value]
            created = [d["_id"] for d in _insert_new(collection, docs)]
        else:
            collection.insert_many(docs, ordered=False)
            created = chunk_ids
        for after in afters:
            after(created)
        if held:
            created = [i for i in created if i not in held]
        if created:
            try:
                broker.push(queue, [str(i) for i in created], delay=delay)
            except Exception:
                if given:  # say so on the documents: a retry of this call pushes them (see _push_lost)
                    _mark_push_failed(collection, created)
                raise
            hook.mrq_jobs_enqueued(queue=queue, path=path, job_ids=created, delay=delay)
        if given and len(created) < len(docs):
            new = set(created)
            _push_lost(collection, broker, hook, [d["_id"] for d in docs if d["_id"] not in new])
        ids.extend(chunk_ids)
    return ids


#: A queued document older than this whose id is in no queue was not pushed by its enqueuer (which died between
#: its insert and its push): an enqueue of the same id pushes it. Younger, its enqueuer may still be pushing it.
PUSH_GRACE = 10.0


def _mark_push_failed(collection: Any, ids: list[ObjectId]) -> None:
    try:
        collection.update_many({"_id": {"$in": ids}, "status": st.QUEUED}, {"$set": {"push_failed": True}})
    except Exception:  # noqa: BLE001 - MongoDB down too: PUSH_GRACE still lets a retry push them
        pass


def _push_lost(collection: Any, broker: Any, hook: Any, existing: list[ObjectId]) -> None:
    """Ids given again to ``queue_jobs`` whose documents exist: those still ``queued`` whose earlier enqueue failed
    to push them (it marked them ``push_failed``, or died: they are older than :data:`PUSH_GRACE`) and whose id is
    in no queue are pushed now, each once, on the document's own queue and delay. Atomic per queue
    (:meth:`Broker.push_unique`, O(the queue's length)); costs nothing more when no such document exists."""
    now = utcnow()
    old = now - datetime.timedelta(seconds=PUSH_GRACE)
    groups: dict[tuple[str, str, bool], list[tuple[str, float, bool]]] = {}
    query = {"_id": {"$in": existing}, "status": st.QUEUED,
             "$or": [{"push_failed": True}, {"datequeued": {"$lt": old}}]}
    for doc in collection.find(query, ["queue", "path", "datedue"]):
        due = doc.get("datedue")
        later = due is not None and due > now
        when = due.replace(tzinfo=datetime.UTC).timestamp() if later else 0.0
        key = (doc.get("queue") or "default", doc.get("path") or "", later)
        groups.setdefault(key, []).append((str(doc["_id"]), when, True))
    for (queue, path, later), entries in groups.items():
        pushed = broker.push_unique(queue, entries, "delayed" if later else "tail")
        collection.update_many({"_id": {"$in": [ObjectId(e[0]) for e in entries]}}, {"$unset": {"push_failed": ""}})
        if pushed:
            delay = max(0.0, max(e[1] for e in entries) - time.time()) if later else 0.0
            hook.mrq_jobs_enqueued(queue=queue, path=path, job_ids=[ObjectId(i) for i in pushed], delay=delay)


def queue_job(path: str, params: Mapping[str, Any], queue: str | None = None, delay: float = 0,
              job_id: ObjectId | str | None = None, unique_key: str | None = None, **options: Any) -> ObjectId:
    """Enqueue one job; see :func:`queue_jobs`.

    :param job_id: the job's id, chosen by the caller: if a job with this id exists, nothing is created.
    :param unique_key: any string, turned into the job id by :func:`job_id_for` (give one or the other).
    :param options: for plugins (``depends_on=[...]``), see :func:`queue_jobs`.
    """
    if unique_key is not None:
        if job_id is not None:
            raise InvalidParams("Give job_id or unique_key, not both.")
        job_id = job_id_for(unique_key)
    return queue_jobs(path, [params], queue=queue, delay=delay,
                      job_ids=[job_id] if job_id is not None else None, **options)[0]


def get_job_result(job_id: ObjectId | str) -> dict[str, Any]:
    """``{"status": ..., "result": ...}`` of a job."""
    data = Job(job_id).fetch(projection=["status", "result"]).data or {}
    return {"status": data.get("status"), "result": data.get("result")}


@dataclass
class Outcome:
    """How a run ended: the status and what to write to MongoDB and Redis."""

    status: str
    set: dict[str, Any] = field(default_factory=dict)
    push_history: dict[str, Any] | None = None
    delayed: tuple[str, float] | None = None   # (queue, due unix time)
    requeue: str | None = None                 # queue to push back at the head
    release: str | None = None                 # semaphore (task path) to free
    raw_push: tuple[str, str, float | None] | None = None  # a raw job's (queue, payload, score) to push back


@dataclass
class RawJob:
    """What a worker knows of a job popped from a raw queue: where it came from and what its queue stores."""

    queue: str
    payload: str
    settings: RawQueueSettings
    score: float | None = None
    error: BaseException | None = None  # the job_factory failed on this payload
    stored: bool = False                # a status of this job was handed to the writer for storage
    _inserted: bool = False

    def stores(self, status: str) -> bool:
        """Whether ``status`` is written to MongoDB: unless ``statuses_no_storage`` names it; a retry always is
        (it needs its count), and so is every status after a first stored one (the job is then a regular one)."""
        if self.stored or status == st.RETRY or status not in self.settings.statuses_no_storage:
            self.stored = True
        return self.stored

    def insert(self, job: Job) -> dict[str, Any] | None:
        """The fields of ``job``'s document, created with its first stored status (then ``None``)."""
        if self._inserted:
            return None
        self._inserted = True
        data = job.data or {}
        fields = {k: data[k] for k in ("path", "params", "queue", "datequeued", "retry_count") if k in data}
        ttl = job.settings.default_ttl if job.settings else 180 * 86400.0
        return fields | {"raw_queue": self.queue, "raw_payload": self.payload,
                         "dateexpires": utcnow() + datetime.timedelta(seconds=ttl)}

    def push_back(self, delay: float = 0.0) -> tuple[str, str, float | None]:
        """``(queue, payload, score)`` to put the job back into its raw queue (a timed set: due in ``delay`` s)."""
        if self.queue.split("/", 1)[0].endswith("_timed_set"):
            return self.queue, self.payload, time.time() + delay
        return self.queue, self.payload, self.score


class Job:
    """A job, by id. ``Job(id).fetch().data`` is its document.

    Inside a worker, ``get_current_job()`` returns the running job, with
    ``path``, ``params``, ``progress`` and :meth:`store` for plugins.
    """

    def __init__(self, job_id: ObjectId | str | None, data: dict[str, Any] | None = None) -> None:
        if isinstance(job_id, str):
            try:
                job_id = ObjectId(job_id)
            except bson.errors.InvalidId:
                raise JobNotFound(f"{job_id!r:.100} is not a job id (24 hexadecimal characters).") from None
        elif job_id is not None and not isinstance(job_id, ObjectId):
            raise JobNotFound(f"{job_id!r:.100} is not a job id (an ObjectId or its 24 hexadecimal characters).")
        self.id = job_id
        self.data = data
        self.result: Any = None
        self.exception: BaseException | None = None
        self.traceback: str | None = None
        self.progress: float | None = None
        self.worker: Worker | None = None
        self.datestarted: float | None = None
        self.greenlet: Any = None
        self.stored: dict[str, Any] = {}
        self.settings: TaskSettings | None = None
        self.raw: RawJob | None = None

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.path}>"

    # -- document
    @property
    def path(self) -> str:
        return (self.data or {}).get("path", "")

    @property
    def params(self) -> dict[str, Any]:
        return (self.data or {}).get("params") or {}

    @property
    def queue(self) -> str:
        return (self.data or {}).get("queue", "default")

    @property
    def status(self) -> str | None:
        return (self.data or {}).get("status")

    def fetch(self, projection: Sequence[str] | None = None) -> Job:
        """Load the document from MongoDB; raises :class:`JobNotFound`."""
        data = _jobs_collection().find_one({"_id": self.id}, projection=list(projection) if projection else None)
        if data is None:
            raise JobNotFound(f"No job with id {self.id} in {JOBS} (expired, deleted, or another database).")
        self.data = data
        return self

    def store(self, **fields: Any) -> None:
        """Fields to write on the job document with its final status (for plugins: memory figures...)."""
        self.stored.update(fields)

    def set_progress(self, ratio: float, save: bool = False) -> None:
        self.progress = max(0.0, min(1.0, float(ratio)))
        if save:
            _jobs_collection().update_one({"_id": self.id}, {"$set": {"progress": self.progress}})

    def wait(self, timeout: float | None = None, poll_interval: float = 0.1, full_data: bool = False) -> Any:
        """Poll until the job is no longer queued, started or held back by a plugin (a ``waiting`` status); return
        its result (or document).

        :raises TimeoutError: if ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.fetch()
            if self.status not in (st.QUEUED, st.STARTED) and self.status not in st.WAITING_STATUSES:
                return self.data if full_data else (self.data or {}).get("result")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {self.id} still {self.status} after {timeout} s")
            gevent.sleep(poll_interval)

    # -- actions
    def cancel(self) -> bool:
        """Cancel the job: a queued job never runs, a running one is stopped within about a second (a running raw
        job with no stored status too: it ends as ``cancel``, stored unless its queue's ``statuses_no_storage``
        names it).

        Returns ``False`` if the job had already finished (its status is kept).
        :raises JobNotFound: if no job has this id, stored or running.
        """
        from mrq.runtime import get_broker, get_current_config, get_plugin_manager
        from mrq.task import task_settings

        if self.data and "path" in self.data:
            data = self.data
        else:
            found = _jobs_collection().find_one({"_id": self.id}, {"path": 1})
            if found is None:  # a raw job that stored nothing yet: stop it if it runs
                if get_broker().request_kill([str(self.id)]):
                    return True
                raise JobNotFound(f"No job with id {self.id} in {JOBS}, and none running with it.")
            data = found
        ttl = task_settings(data.get("path", ""), get_current_config()).cancel_ttl
        now = utcnow()
        fields = {"status": st.CANCEL, "dateupdated": now, "dateexpires": now + datetime.timedelta(seconds=ttl)}
        res = _jobs_collection().update_one(
            {"_id": self.id, "status": {"$in": sorted(st.allowed_from(st.CANCEL))}}, {"$set": fields})
        if not res.modified_count:
            return False
        get_broker().request_kill([str(self.id)])
        hook = get_plugin_manager().hook
        hook.mrq_job_status_changed(job_id=self.id, status=st.CANCEL, fields=fields)
        hook.mrq_jobs_status_changed(changes=[(self.id, st.CANCEL, fields)])
        return True

    def requeue(self, queue: str | None = None, retry_count: int | None = 0) -> bool:
        """Queue the job again (any status but ``queued``), on ``queue`` or its own queue.

        :param retry_count: reset the retry counter to this (``None`` keeps it).
        :raises InvalidParams: if ``queue`` cannot name a regular queue (nothing is changed).
        :raises MRQError: if the job runs now on a live worker (cancel it first).
        :return: ``False`` if the job was already queued.
        """
        from mrq.broker import InFlight, check_job_queue
        from mrq.runtime import get_broker, get_plugin_manager

        if queue is not None:
            check_job_queue(queue)
        broker = get_broker()
        self.fetch(["queue", "status", "path"])
        queue = queue or self.queue
        rec = broker.redis.hget(broker.inflight_key, str(self.id))
        if rec:
            worker = rec.decode().split(" ", 1)[0]
            if broker.alive([worker])[worker]:
                raise MRQError(f"Job {self.id} is running on worker {worker}: cancel it first, or let it end.")
        now = utcnow()
        fields: dict[str, Any] = {"status": st.QUEUED, "queue": queue, "datequeued": now, "dateupdated": now}
        if retry_count is not None:
            fields["retry_count"] = retry_count
        res = _jobs_collection().update_one({"_id": self.id, "status": {"$ne": st.QUEUED}},
                                            {"$set": fields, "$unset": {"datedue": ""}})
        if not res.modified_count:
            return False
        if rec:
            broker.requeue_inflight([InFlight(str(self.id), "", 0, queue)])
        else:  # a cancelled job may still have its id in its list: never push it twice, nor leave it behind
            broker.push_unique(queue, [(str(self.id), 0.0, True)], move_from=self.queue)
        hook = get_plugin_manager().hook
        hook.mrq_job_status_changed(job_id=self.id, status=st.QUEUED, fields=fields)
        hook.mrq_jobs_status_changed(changes=[(self.id, st.QUEUED, fields)])
        return True

    # -- execution
    def perform(self, settings: TaskSettings, worker: Worker | None = None) -> Outcome:
        """Run the task in the current greenlet and decide the outcome; never raises a task error."""
        from mrq.runtime import get_plugin_manager, set_current_job

        self.settings, self.worker = settings, worker
        self.greenlet = gevent.getcurrent()
        self.datestarted = time.time()
        set_current_job(self)
        timer = gevent.Timeout(settings.timeout, TimeoutInterrupt(f"Job ran longer than {settings.timeout} s"))
        timer.start()
        # A task that catches the timeout and goes on is interrupted again, every second, until it ends.
        ended: list[bool] = []
        enforcer = (gevent.spawn_later(settings.timeout + 1.0, self._enforce_timeout, self.greenlet, ended,
                                       settings.timeout) if isinstance(self.greenlet, gevent.Greenlet) else None)
        try:
            self.result = get_plugin_manager().hook.mrq_job_execute(worker=worker, job=self)
            outcome = Outcome(st.SUCCESS)
        except BaseException as exc:  # noqa: BLE001 - every way a task can end is a status
            self.exception = exc
            self.traceback = _format_traceback(exc, self.path)
            outcome = self._outcome_of(exc)
        finally:
            fired = not timer.pending
            timer.close()
            ended.append(True)
            if enforcer is not None:
                enforcer.kill(block=False)
            if fired:
                try:  # a repeated timeout already on its way must not hit the code after the job
                    gevent.sleep(0)
                except TimeoutInterrupt:
                    pass
            set_current_job(None)
        if fired and outcome.status not in (st.TIMEOUT, st.CANCEL, st.INTERRUPT):
            # The task swallowed the timeout and went on: it still timed out.
            outcome = Outcome(st.TIMEOUT)
            self.traceback = self.traceback or "TimeoutInterrupt (caught by the task)"
        return self._complete(outcome)

    @staticmethod
    def _enforce_timeout(greenlet: Any, ended: list[bool], timeout: float) -> None:
        while not ended and not greenlet.dead:
            greenlet.kill(TimeoutInterrupt(f"Job ran longer than {timeout} s (and caught the timeout)"), block=False)
            gevent.sleep(1.0)

    def fail_with(self, exc: BaseException) -> Outcome:
        """End the job as ``failed`` with ``exc`` without running it (a raw job whose payload its factory refused)."""
        self.exception = exc
        self.traceback = _format_traceback(exc)
        self.datestarted = time.time()
        return self._complete(Outcome(st.FAILED))

    def _outcome_of(self, exc: BaseException) -> Outcome:
        assert self.settings is not None
        if isinstance(exc, RetryInterrupt):
            return self._retry(exc.delay, exc.queue, exc.max_retries)
        if isinstance(exc, MrqInterrupt):
            return Outcome(exc.status)
        if isinstance(exc, (JobInterrupt, gevent.GreenletExit)):
            return Outcome(st.INTERRUPT, requeue=self.queue)
        if self.settings.retry_on and isinstance(exc, self.settings.retry_on):
            return self._retry(None, None, None)
        return Outcome(st.FAILED)

    def _retry(self, delay: float | None, queue: str | None, max_retries: int | None) -> Outcome:
        assert self.settings is not None
        s = self.settings
        count = int((self.data or {}).get("retry_count") or 0)
        if count >= (s.max_retries if max_retries is None else max_retries):
            return Outcome(st.MAXRETRIES)
        if delay is None:
            try:
                base = min(s.retry_max_delay, s.retry_delay * (s.retry_backoff ** count))
            except OverflowError:  # a huge retry count: the cap applies
                base = s.retry_max_delay
            delay = base / 2 + random.random() * base / 2  # "equal jitter": between half and all of it
        queue = queue or self.queue
        due = time.time() + delay
        outcome = Outcome(st.RETRY, delayed=(queue, due))
        outcome.set.update(retry_count=count + 1, queue=queue,
                           dateretry=datetime.datetime.fromtimestamp(due, datetime.UTC).replace(tzinfo=None))
        return outcome

    def _complete(self, outcome: Outcome) -> Outcome:
        """Fill in the fields every status writes."""
        assert self.settings is not None
        s, now = self.settings, utcnow()
        ttl = {st.SUCCESS: s.result_ttl, st.ABORT: s.abort_ttl, st.CANCEL: s.cancel_ttl}.get(
            outcome.status, s.default_ttl)
        outcome.set.update(self.stored)
        outcome.set.update(status=outcome.status, dateupdated=now,
                           dateexpires=now + datetime.timedelta(seconds=ttl),
                           totaltime=round(time.time() - (self.datestarted or time.time()), 6))
        if outcome.status == st.SUCCESS:
            outcome.set["result"] = self.result
            if self.progress is not None:
                outcome.set["progress"] = 1.0
        elif self.exception is not None or outcome.status == st.TIMEOUT:
            exc_type = type(self.exception).__name__ if self.exception is not None else "TimeoutInterrupt"
            outcome.set.update(traceback=self.traceback, exceptiontype=exc_type)
            outcome.push_history = {"date": now, "status": outcome.status, "exceptiontype": exc_type,
                                    "traceback": self.traceback,
                                    "worker": getattr(self.worker, "id", None)}
        if self.settings.max_concurrency:
            outcome.release = self.path
        return outcome


#: Longest traceback stored (its start and its end are kept): a job's document holds it twice (``traceback`` and
#: ``traceback_history``) and must stay under MongoDB's 16 MiB.
MAX_TRACEBACK_CHARS = 64 * 1024


def _format_traceback(exc: BaseException, path: str = "") -> str:
    """The traceback of a task error, starting at the task's own code: the frames that led to it (MRQ's, pluggy's,
    the wrappers of plugins) are left out. Without a frame of the task's module (a task that does not import, a
    job factory that fails), only pluggy's frames are left out."""
    te = traceback.TracebackException.from_exception(exc)
    frames = [f for f in te.stack if "/pluggy/" not in f.filename]
    module = sys.modules.get(path.rpartition(".")[0]) if path else None
    task_file = getattr(module, "__file__", None)
    if task_file:
        task_file = os.path.abspath(task_file)
        first = next((i for i, f in enumerate(frames) if os.path.abspath(f.filename) == task_file), None)
        if first is not None:
            frames = frames[first:]
    te.stack = traceback.StackSummary.from_list(frames)
    text = "".join(te.format())
    if len(text) > MAX_TRACEBACK_CHARS:  # a huge exception message: the job's document must stay storable
        half = MAX_TRACEBACK_CHARS // 2
        text = f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"
    return text
