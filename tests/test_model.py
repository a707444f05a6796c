"""A model of the broker, checked by hypothesis (issue 15).

A ``RuleBasedStateMachine`` drives the real kernel, in this process, against the test Redis and MongoDB: jobs
enqueued by ``queue_job``/``queue_raw_jobs``, dequeued, run and finished by real :class:`mrq.worker.Worker` objects
(``_dequeue``, ``_acquire``, ``_perform``, ``_finish``, their :class:`mrq.writer.StatusWriter`), cancelled,
requeued, workers killed and recovered as the cleaning plugin does, Redis losing its data and the queues rebuilt,
time passing. Nothing runs in a greenlet of its own but the writers' marks loops (a rule lets them run): each
rule is one step of one actor, so hypothesis chooses the interleaving. Jobs run ``tests.tasks.model`` tasks,
which end as the rule says.

After every step the real state (every key of Redis that holds a job, every document of MongoDB) is compared
with a small model of what must be true:

* every job is in exactly one place: a queue's list, its delayed set (a delay, a retry, or parked for a
  max_concurrency slot), a raw queue, in flight on one worker; or nowhere (final), except a cancelled job's
  stale id, which the dequeue drops;
* no job runs twice, unless its worker died while it ran (a job popped twice counts as running twice);
* no delayed job runs before its time, and a dequeue pops every due job it may, in priority order;
* the slots held per task are those of the jobs that took one and whose end (or death) was not acknowledged;
* a job waiting for a slot has one waiting entry, scored by the due time of its fallback;
* every in-flight record parses; an end mark exists only for a job that ended and is still in flight;
* each document's status is what the writes the model expects leave.

The clock is the model's: ``time.time`` and ``utcnow`` of the kernel modules read it, in steps of 1/8 s
(exact in binary and in MongoDB's milliseconds). ``MRQ_MODEL_EXAMPLES`` (default 150) and ``MRQ_MODEL_STEPS``
(default 40) set the size of the search: ``MRQ_MODEL_EXAMPLES=2000`` for a long run. Rules take indices
(``worker=1``: the second live worker, round the list), so that a counterexample reads as plain calls: the ones
found are kept at the end of this module as scripts (:class:`Script`).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import mrq_cleaning.core
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from mrq_cleaning.core import Cleaner

import mrq.broker
import mrq.job
import mrq.worker
from mrq import status as S
from mrq.config import get_config
from mrq.context import connections, get_broker, set_current_config
from mrq.exceptions import JobInterrupt, JobNotFound, MRQError, RetryInterrupt, TimeoutInterrupt
from mrq.job import Job, queue_job, queue_jobs
from mrq.raw import queue_raw_jobs
from mrq.worker import Worker
from tests.tasks import model as tasks

EXAMPLES = int(os.environ.get("MRQ_MODEL_EXAMPLES", "150"))
STEPS = int(os.environ.get("MRQ_MODEL_STEPS", "40"))

T0 = 1_800_000_000.0  # the model's clock starts here, and moves by multiples of TICK
TICK = 0.125
TASK = "tests.tasks.model."
LIMITS = {TASK + "Step": 0, TASK + "Solo": 1, TASK + "Pair": 2}
REGULAR = ("qa", "qb", "retries")
#: raw queue -> (kind, statuses not stored, retry queue)
RAW: dict[str, tuple[str, tuple[str, ...], str]] = {
    "plain_raw": ("l", (S.STARTED, S.SUCCESS), "retries"),
    "quiet_raw": ("l", (S.STARTED, S.SUCCESS, S.INTERRUPT), "qa"),
    "kept_raw": ("l", (), "retries"),
    "plain_set": ("s", (S.STARTED, S.SUCCESS), "qb"),
    "plain_sorted_set": ("z", (S.STARTED, S.SUCCESS), "retries"),
    "plain_timed_set": ("t", (S.STARTED, S.SUCCESS), "qa"),
}
QUEUES = (*REGULAR, *RAW)
MAX_WORKERS = 6    # workers started per example (at most 3 alive at once)
MAX_DEATHS = 2     # --max_worker_deaths
OUTCOMES = ("success", "failed", "retry", "timeout", "interrupt")

Loc = tuple[Any, ...]  # ("q", queue) list | ("z", queue, score) delayed set | ("r", queue, score) raw queue |
#                        ("p", queue, score, id) raw job parked | ("i", worker, queue) in flight


class Clock:
    """The model's time, read by the kernel modules in place of the ``time`` module (other names pass through)."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now

    def utcnow(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.now, datetime.UTC).replace(tzinfo=None)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


CLOCK = Clock()
#: The kernel's randomness (the jitter of a parked job's fallback), seeded per example: the global ``random`` is
#: also drawn from by the MongoDB driver's threads, which would make the examples irreproducible.
RANDOM = random.Random()

#: How often each interesting thing happened in this process's runs of the model (printed by the test).
SEEN: Counter[str] = Counter()


def seen(what: str) -> None:
    SEEN[what] += 1
    if currently_in_test_context():
        event(what)


@dataclass
class MJob:
    """What the model knows of one job."""

    name: str
    path: str
    queue: str                    # its document's queue (a raw job's retry queue)
    payload: str | None = None    # a raw job's payload (unique), until it is requeued as a regular job
    raw_queue: str | None = None
    score: float | None = None    # in its sorted or timed set
    id: str | None = None         # a raw job has one while popped or parked
    loc: Loc | None = None        # where Redis has it (None: nowhere)
    doc: str | None = None        # status of its document (None: no document)
    doc_worker: str | None = None
    datedue: float | None = None
    dateretry: float | None = None
    retries: int = 0
    deaths: int = 0
    not_before: float = 0.0       # may not run before (a delay, a retry, a timed set's score)
    slot: bool = False            # holds a slot of its task's max_concurrency
    parked_due: float | None = None  # waits for a slot: the due time of its fallback (and its waiting entry)
    marked: bool = False          # its end is marked in Redis ({p}:done) and not acknowledged
    raw_stored: bool = False      # a raw job whose status was stored in this run

    @property
    def key(self) -> str:
        """How Redis names it: a raw job by its payload, a regular one by its id."""
        key = self.payload if self.payload is not None else self.id
        assert key is not None
        return key

    @property
    def limit(self) -> int:
        return LIMITS[self.path]

    def __repr__(self) -> str:
        return f"<{self.name} {self.path.rsplit('.', 1)[1]} id={self.id} at {self.loc} doc={self.doc}>"


@dataclass
class Pending:
    """A job's writes and acknowledgement waiting in a worker's status writer."""

    job: MJob
    statuses: list[str] = field(default_factory=list)
    insert: bool = False
    done: bool = False
    delayed: tuple[str, float] | None = None
    requeue: str | None = None
    release: str | None = None
    raw_push: float | None | bool = False  # False: none; else the score it goes back with
    mark: bool = False                   # the writer marks this end in Redis ({p}:done)


@dataclass
class MWorker:
    """A simulated worker: a real :class:`Worker` whose jobs run when a rule says so."""

    worker: Worker
    id: str
    name: str
    alive: bool = True
    recovered: bool = False
    pending: dict[str, Pending] = field(default_factory=dict)  # job name -> what its writer holds
    unmarked: list[str] = field(default_factory=list)        # ends whose mark is not written yet
    kills: set[str] = field(default_factory=set)             # kill requests addressed to it, not taken yet
    cancel_early: set[str] = field(default_factory=set)      # kill requests taken for jobs it runs
    ends: list[tuple[str, str]] = field(default_factory=list)  # (job id, status) of each _finish

    def __repr__(self) -> str:
        return f"<{self.name} {self.id}{'' if self.alive else ' (dead)'}>"


class _NoPool:
    """The worker's pool: nothing runs by itself, a rule ends each job."""

    def spawn(self, *args: Any, **kwargs: Any) -> None:
        return None

    def join(self, *args: Any, **kwargs: Any) -> None:
        return None

    def free_count(self) -> int:
        return 100


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def model_config(redis: str, mongodb: str) -> Any:
    raw = {q: {"job_factory": tasks.factory, "statuses_no_storage": ns, "retry_queue": rq}
           for q, (_, ns, rq) in RAW.items()}
    return get_config("worker", argv=None, env={}, extra={
        "redis": redis, "mongodb_jobs": mongodb, "raw_queues": raw, "queues": list(QUEUES), "quiet": True,
        "max_worker_deaths": MAX_DEATHS, "greenlets": 100, "flush_interval": 3600.0})


@pytest.fixture
def model_context(mrq_urls: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The MRQ context of the model: its raw queues, and the kernel reading the model's clock."""
    config = model_config(mrq_urls.redis, mrq_urls.mongodb)
    set_current_config(config)
    for module in (mrq.broker, mrq.job, mrq.worker, mrq_cleaning.core):
        monkeypatch.setattr(module, "time", CLOCK)
    for module in (mrq.job, mrq.worker, mrq_cleaning.core):
        monkeypatch.setattr(module, "utcnow", CLOCK.utcnow)
    monkeypatch.setattr(mrq.broker, "random", RANDOM)
    try:
        yield config
    finally:
        tasks.ENDS.clear()
        connections.reset()


class BrokerModel(RuleBasedStateMachine):
    """The kernel and its model, side by side; see the module's docstring."""

    config: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.broker = get_broker()
        self.broker.redis.flushdb()
        self.db = connections.mongodb_jobs["mrq_jobs"]
        self.db.delete_many({})
        tasks.ENDS.clear()
        CLOCK.now = T0
        RANDOM.seed(0)
        self.jobs: list[MJob] = []
        self.workers: list[MWorker] = []
        self.count = 0
        self.recoveries: list[tuple[str, dict[str, list[str]]]] = []
        self._real_recover = mrq_cleaning.core.requeue_dead_worker_jobs
        mrq_cleaning.core.requeue_dead_worker_jobs = self._spy_recover  # type: ignore[assignment]
        self.start_worker()

    def teardown(self) -> None:
        mrq_cleaning.core.requeue_dead_worker_jobs = self._real_recover  # type: ignore[assignment]

    def _spy_recover(self, records: Any, worker_id: str, *args: Any, **kwargs: Any) -> dict[str, list[str]]:
        result = self._real_recover(records, worker_id, *args, **kwargs)
        self.recoveries.append((worker_id, result))
        return result

    # ------------------------------------------------------------------ helpers
    def live(self) -> list[MWorker]:
        return [w for w in self.workers if w.alive]

    def by_id(self, job_id: str) -> MJob:
        found = [j for j in self.jobs if j.id == job_id]
        assert len(found) == 1, f"{len(found)} model jobs have id {job_id}"
        return found[0]

    def by_payload(self, payload: str) -> MJob:
        found = [j for j in self.jobs if j.payload == payload]
        assert len(found) == 1, f"{len(found)} model jobs have payload {payload}"
        return found[0]

    def worker(self, worker_id: str) -> MWorker:
        return next(w for w in self.workers if w.id == worker_id)

    def holds(self, mw: MWorker) -> bool:
        """Whether the worker has jobs in flight."""
        return any(j.loc is not None and j.loc[0] == "i" and j.loc[1] == mw.id for j in self.jobs)

    @staticmethod
    def pick(index: int, items: list[Any]) -> Any:
        """The ``index``-th of ``items``, round the list (rules take indices: a counterexample reads as plain
        calls)."""
        assert items
        return items[index % len(items)]

    def due(self, loc: Loc) -> bool:
        """Whether a job at this place may be popped now."""
        if loc[0] == "q":
            return True
        if loc[0] == "z":
            return bool(loc[2] <= CLOCK.now)
        if loc[0] == "r":
            return RAW[loc[1]][0] != "t" or loc[2] <= CLOCK.now
        if loc[0] == "p":
            return bool(loc[2] <= CLOCK.now)
        return False

    def is_parked(self, j: MJob) -> bool:
        """Waiting for a slot, in the delayed set of its queue for that deferral."""
        return j.parked_due is not None and j.loc is not None and j.loc[0] in ("z", "p") \
            and j.loc[2] == j.parked_due

    def beat(self, mw: MWorker) -> list[str]:
        """One beat of ``Worker._heartbeat_loop``: refresh the heartbeat, take the kill requests, write the
        in-flight records again if Redis lost its data. Returns the ids the worker was asked to kill."""
        w = mw.worker
        kills, _, epoch = self.broker.beat(mw.id, 3600.0, w.status)
        for sid in kills:
            w._kill_job(ObjectId(sid))
        if w._epoch is not None and epoch != w._epoch:
            w._record_inflight_again()
        w._epoch = epoch
        return kills

    def apply_write(self, j: MJob, p: Pending, worker_id: str) -> None:
        """A status write of the writer (or of a marked end): filtered on the statuses it may replace, or an
        upsert for a raw job's first stored status."""
        if not p.statuses:
            return
        final = p.statuses[-1]
        if p.insert and j.doc is None:
            j.doc = final
        elif j.doc is not None and j.doc in S.RUNNABLE_STATUSES:
            j.doc = final
        else:
            return
        if S.STARTED in p.statuses:
            j.doc_worker = worker_id
            if final == S.STARTED:
                j.datedue = None
        if final == S.RETRY:
            j.retries += 1
            assert p.delayed is not None
            j.dateretry = p.delayed[1]

    def apply_ack(self, j: MJob, p: Pending, released: Counter[str]) -> None:
        """The Redis side of a job's end (``Broker.ack``)."""
        if p.done:
            assert j.loc is not None and j.loc[0] == "i", f"{j.name} acknowledged at {j.loc}"
            j.loc = None
            j.marked = False
        if p.delayed is not None:
            queue, due = p.delayed
            self.to_regular(j, queue)
            j.loc = ("z", queue, due)
            j.not_before = max(j.not_before, due) if due else j.not_before
        if p.requeue is not None:
            self.to_regular(j, p.requeue)
            j.loc = ("q", p.requeue)
        if p.raw_push is not False:
            assert j.raw_queue is not None and j.payload is not None
            j.score = p.raw_push if isinstance(p.raw_push, float) else None
            j.loc = ("r", j.raw_queue, j.score)
            j.id = None
        if p.release is not None:  # (a slot lost with Redis's data is released all the same)
            j.slot = False
            released[p.release] += 1

    def to_regular(self, j: MJob, queue: str) -> None:
        if j.payload is not None:
            assert j.doc is not None, f"raw job {j.name} requeued as a regular job without a document"
            j.payload = None
        j.queue = queue

    def flush(self, mw: MWorker) -> None:
        """The writer stores every status it holds, then acknowledges them in Redis (``flush_once``)."""
        assert mw.worker.writer.flush(timeout=30)
        self.flush_model_only(mw)

    def woken(self, released: Counter[str]) -> None:
        """Slots were released: as many jobs waiting for them as slots freed, lowest fallback first, were
        promoted (a regular id to the head of its queue, a parked raw job due now). Checked against Redis."""
        for path, count in released.items():
            waiting = [j for j in self.jobs if j.path == path and self.is_parked(j)]
            promoted = []
            for j in waiting:
                assert j.loc is not None
                if j.loc[0] == "z":
                    score = self.broker.redis.zscore(self.broker.delayed_key(j.loc[1]), j.key)
                    if score is None:
                        promoted.append(j)
                        j.loc = ("q", j.loc[1])
                else:
                    member = self.broker.parked_raw(j.loc[3], j.key, j.score)
                    score = self.broker.redis.zscore(self.broker.delayed_key(j.loc[1]), member)
                    if score == 0:
                        promoted.append(j)
                        j.loc = ("p", j.loc[1], 0.0, j.loc[3])
            assert len(promoted) == min(count, len(waiting)), \
                f"{count} slot(s) of {path} freed, {len(waiting)} job(s) waiting, {len(promoted)} woken"
            if promoted:
                seen("a release wakes a waiting job")
            for j in promoted:
                assert all(j.parked_due <= k.parked_due for k in waiting if k not in promoted)  # type: ignore[operator]
                j.parked_due = None

    # ------------------------------------------------------------------ rules: enqueue
    @rule(queue=st.sampled_from(("qa", "qb")), path=st.sampled_from(sorted(LIMITS)), n=st.integers(1, 3),
          delay=st.sampled_from((0, 0, 1, 4, 16)), unique=st.sampled_from(("no", "no", "new", "again")))
    def enqueue(self, queue: str, path: str, n: int, delay: int, unique: str) -> None:
        """``queue_jobs``: ``n`` regular jobs, maybe delayed; or ``queue_job`` with a unique key (``again``: the
        key of an earlier job, which must change nothing)."""
        self.count += 1
        if unique == "again":
            olds = [j for j in self.jobs if j.name.startswith("u")]
            if not olds:
                return
            old = olds[self.count % len(olds)]
            before = (old.loc, old.doc)
            job_id = queue_job(old.path, {}, queue=queue, delay=delay * TICK, unique_key=old.name)
            assert str(job_id) == old.id and (old.loc, old.doc) == before
            return
        if unique == "new":
            ids = [queue_job(path, {}, queue=queue, delay=delay * TICK, unique_key=f"u{self.count}")]
        else:
            ids = queue_jobs(path, [{}] * n, queue=queue, delay=delay * TICK)
        due = CLOCK.now + delay * TICK
        for i, job_id in enumerate(ids):
            name = f"u{self.count}" if unique == "new" else f"j{self.count}" + "abc"[i]
            self.jobs.append(MJob(name, path, queue, id=str(job_id), doc=S.QUEUED,
                                  loc=("z", queue, due) if delay else ("q", queue),
                                  datedue=due if delay else None, not_before=due if delay else 0.0))

    @rule(queue=st.sampled_from(sorted(RAW)), task=st.sampled_from(("Step", "Solo", "Pair")), n=st.integers(1, 3),
          later=st.sampled_from((0, 0, 2, 8)))
    def enqueue_raw(self, queue: str, task: str, n: int, later: int) -> None:
        """``queue_raw_jobs``: ``n`` payloads (a sorted set's scores, a timed set's due time). A set holds one job
        at a time: Redis pops a set's members at random, which would make the examples irreproducible."""
        self.count += 1
        kind = RAW[queue][0]
        if kind == "s":
            if any(j.raw_queue == queue and j.loc is not None for j in self.jobs):
                return
            n = 1
        payloads = [json.dumps({"n": f"{self.count}{'abc'[i]}", "task": task}) for i in range(n)]
        scores: dict[str, float] = {}
        if kind in ("z", "t"):
            scores = {p: float(i % 2) if kind == "z" else CLOCK.now + later * TICK for i, p in enumerate(payloads)}
            queue_raw_jobs(queue, scores)
        else:
            queue_raw_jobs(queue, payloads)
        for i, payload in enumerate(payloads):
            score = scores.get(payload)
            self.jobs.append(MJob(f"r{self.count}" + "abc"[i], TASK + task, RAW[queue][2], payload=payload,
                                  raw_queue=queue, score=score, loc=("r", queue, score),
                                  not_before=score if kind == "t" and score is not None else 0.0))

    # ------------------------------------------------------------------ rules: workers
    @precondition(lambda self: len(self.live()) < 3 and len(self.workers) < MAX_WORKERS)
    @rule()
    def start_worker(self) -> None:
        """A worker starts (``Worker(config)``, its first heartbeat); its jobs end when a rule says so."""
        w = Worker(self.config)
        w.pool = _NoPool()  # type: ignore[assignment]
        mw = MWorker(w, str(w.id), f"w{len(self.workers) + 1}")
        finish = w._finish

        def recorded(job: Job, outcome: Any) -> None:
            mw.ends.append((str(job.id), outcome.status))
            finish(job, outcome)

        w._finish = recorded  # type: ignore[method-assign]
        self.beat(mw)
        self.workers.append(mw)

    @precondition(lambda self: any(w.alive for w in self.workers)
                  and any(j.loc is not None and j.loc[0] != "i" for j in self.jobs))
    @rule(worker=st.integers(0, 2), count=st.integers(1, 4), order=st.permutations(QUEUES),
          first=st.integers(1, len(QUEUES)), busy=st.booleans())
    def dequeue(self, worker: int, count: int, order: list[str], first: int, busy: bool) -> None:
        """``Worker._dequeue``: one atomic pop from some queues (``first`` of ``order``; ``busy``: of those with
        jobs) in priority order: as many as are due, up to ``count``, none before its time, each from where the
        model has it waiting. Then per job what the worker does: skip a job whose document is final, run a
        suspect alone (the others go back), take a slot or park the job for one."""
        mw = self.pick(worker, self.live())
        waiting = {j.loc[1] for j in self.jobs if j.loc is not None and j.loc[0] != "i"}
        queues = [q for q in order if q in waiting or not busy][:first] or list(order[:1])
        w = mw.worker
        # What may be popped: due delayed ids move to their list first (every regular queue named).
        for j in self.jobs:
            if j.loc is not None and j.loc[0] == "z" and j.loc[1] in queues and self.due(j.loc):
                j.loc = ("q", j.loc[1])
                j.parked_due = None
        avail = {q: [j for j in self.jobs if j.loc is not None and j.loc[0] != "i" and j.loc[1] == q
                     and self.due(j.loc)] for q in queues}
        suspects = {str(d["_id"]) for d in self.db.find({"suspect": True}, {"_id": 1})}
        w.active_queues = queues
        ends_before = len(mw.ends)
        captured: list[tuple[list[tuple[str, str]], list[Any]]] = []
        real = self.broker.dequeue_all

        def capture(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            captured.append(out)
            return out

        self.broker.dequeue_all = capture  # type: ignore[method-assign]
        try:
            w._dequeue(count, "sequential")
        finally:
            del self.broker.dequeue_all
        regular, raw = captured[0]
        # The pop: as many as due, in priority order, each from where the model has it waiting.
        popped: list[MJob] = []
        for queue, sid in regular:
            j = self.by_id(sid)
            assert j.payload is None and j in avail[queue], f"{j.name} popped from {queue}, model: {j.loc}"
            j.loc = ("i", mw.id, queue)
            popped.append(j)
        for item in raw:
            j = self.by_payload(item.payload)
            assert j in avail[item.queue], f"{j.name} popped from {item.queue}, model: {j.loc}"
            assert j.loc is not None
            if j.loc[0] == "p":
                assert item.job_id == j.loc[3], f"parked raw job {j.name} popped under a new id"
            else:
                assert item.score == j.score, f"{j.name} popped with score {item.score}, model: {j.score}"
                assert all(k.id != item.job_id for k in self.jobs), f"{j.name} popped under a used id"
            j.id = item.job_id
            j.loc = ("i", mw.id, item.queue)
            popped.append(j)
        want = count
        for q in queues:
            got = [j for j in popped if j.loc is not None and j.loc[2] == q]
            assert len(got) == min(want, len(avail[q])), \
                f"popped {len(got)} job(s) of {q}: {len(avail[q])} due, {want} wanted"
            for j in got:
                assert j.not_before <= CLOCK.now, f"{j.name} ran at {CLOCK.now}, due at {j.not_before}"
            want -= len(got)
        for j in popped:
            j.parked_due = None
            j.raw_stored = False
        # What the worker does with them, in its order: regular jobs, then raw ones.
        runnable = []
        for j in popped:
            if j.payload is None and (j.doc is None or j.doc not in S.RUNNABLE_STATUSES):
                mw.pending[j.name] = Pending(j, done=True)  # skipped: acknowledged with the next flush
                seen("a stale id is dropped")
            else:
                runnable.append(j)
        suspect = next((j for j in runnable if j.id in suspects), None)
        if suspect is not None:  # it runs alone: the others go back, the writer stores everything
            seen("a suspect runs alone")
            for j in runnable:
                if j is suspect:
                    continue
                if j.payload is None:
                    mw.pending[j.name] = Pending(j, done=True, delayed=(j.queue, 0.0))
                else:
                    mw.pending[j.name] = Pending(j, done=True, raw_push=self.push_back_score(j), mark=True)
                    mw.unmarked.append(j.name)
            self.flush_model_only(mw)
            runnable = [suspect]
        running = []
        for j in runnable:
            assert j.id is not None and j.loc is not None
            if j.limit:
                holders = sum(1 for k in self.jobs if k.slot and k.path == j.path)
                if holders >= j.limit:
                    queue = j.raw_queue if j.payload is not None else j.queue
                    assert queue is not None
                    member = self.broker.parked_raw(j.id, j.key, j.score) if j.payload is not None else j.id
                    score = self.broker.redis.zscore(self.broker.delayed_key(queue), member)
                    assert score is not None and 5 <= score - CLOCK.now <= 10, f"{j.name} parked at {score}"
                    j.loc = ("p", queue, score, j.id) if j.payload is not None else ("z", queue, score)
                    j.parked_due = score
                    seen("a job waits for a slot")
                    continue
                j.slot = True
            running.append(j)
            if j.payload is None or S.STARTED not in RAW[j.loc[2]][1]:
                mw.pending[j.name] = Pending(j, statuses=[S.STARTED], insert=j.payload is not None and j.doc is None)
                j.raw_stored = j.payload is not None
        assert len(mw.ends) == ends_before
        assert {str(i) for i in w.jobs} == {j.id for j in self.jobs if j.loc is not None and j.loc[0] == "i"
                                            and j.loc[1] == mw.id and self.runs_on(j, mw)}

    def runs_on(self, j: MJob, mw: MWorker) -> bool:
        """Whether the job runs (started, not ended) on this worker, per the model."""
        p = mw.pending.get(j.name)
        return p is None or (not p.done)

    def push_back_score(self, j: MJob) -> float | None:
        """The score a raw job goes back with from a worker (``RawJob.push_back``): a timed set's is now."""
        assert j.raw_queue is not None
        return CLOCK.now if RAW[j.raw_queue][0] == "t" else j.score

    def flush_model_only(self, mw: MWorker) -> None:
        """The model's side of a flush the kernel made by itself (a suspect's isolation)."""
        released: Counter[str] = Counter()
        pending, mw.pending = list(mw.pending.values()), {}
        for p in pending:
            self.apply_write(p.job, p, mw.id)
        for p in pending:
            self.apply_ack(p.job, p, released)
        self.woken(released)

    @precondition(lambda self: any(w.alive and w.worker.jobs for w in self.workers))
    @rule(worker=st.integers(0, 2), job=st.integers(0, 3), outcome=st.sampled_from(OUTCOMES),
          delay=st.sampled_from((0, 1, 8)),
          flush=st.booleans())
    def end(self, worker: int, job: int, outcome: str, delay: int, flush: bool) -> None:
        """A running job ends (``Worker._perform``): success, failure, retry in ``delay`` ticks, timeout,
        interrupt; or cancel, if the worker took a kill request for it. Its end goes to the writer (a retry to
        the delayed set, an interrupt back to its queue, a raw job that stores nothing back into its raw queue),
        its slot is released with the acknowledgement; ``flush``: the writer stores it at once."""
        mw = self.pick(worker, [w for w in self.live() if w.worker.jobs])
        w = mw.worker
        j = self.pick(job, [self.by_id(str(i)) for i in sorted(w.jobs)])
        running = w.jobs[ObjectId(j.id)]
        exc: BaseException | None = {"success": None, "failed": ValueError("model"),
                                     "retry": RetryInterrupt(delay=delay * TICK), "timeout": TimeoutInterrupt(),
                                     "interrupt": JobInterrupt()}[outcome]
        if exc is not None:
            tasks.ENDS[str(j.id)] = exc
        status = {"success": S.SUCCESS, "failed": S.FAILED, "retry": S.RETRY, "timeout": S.TIMEOUT,
                  "interrupt": S.INTERRUPT}[outcome]
        if j.id in mw.cancel_early:
            seen("a running job is cancelled")
            status = S.CANCEL
            mw.cancel_early.discard(j.id)
        if status == S.RETRY and j.retries >= 2:
            status = S.MAXRETRIES
        w._perform(running, running.settings)
        tasks.ENDS.pop(str(j.id), None)
        assert mw.ends[-1] == (j.id, status), f"{j.name} ended as {mw.ends[-1][1]}, expected {status}"
        p = mw.pending.setdefault(j.name, Pending(j))
        p.done = True
        store = True
        if j.payload is not None:
            assert j.raw_queue is not None
            store = j.raw_stored or status == S.RETRY or status not in RAW[j.raw_queue][1]
            if store and not j.raw_stored and j.doc is None:
                p.insert = True
            j.raw_stored = j.raw_stored or store
        if store:
            p.statuses.append(status)
        if status == S.RETRY:
            p.delayed = (j.queue, CLOCK.now + delay * TICK)
        if status == S.INTERRUPT:
            if store:
                p.requeue = j.queue
            else:
                p.raw_push = self.push_back_score(j)
        if j.limit:
            p.release = j.path
        p.mark = store or bool(p.delayed or p.requeue or p.release or p.raw_push is not False)
        if p.mark:
            mw.unmarked.append(j.name)
        if flush:
            self.flush(mw)

    @precondition(lambda self: any(w.alive and w.pending for w in self.workers))
    @rule(worker=st.integers(0, 2))
    def flush_writer(self, worker: int) -> None:
        """A worker's writer stores the statuses it holds and acknowledges them (``StatusWriter.flush_once``)."""
        self.flush(self.pick(worker, [w for w in self.live() if w.pending]))

    @rule()
    def write_marks(self) -> None:
        """The writers' marks loops run (``StatusWriter.run_marks``): each end not marked yet is marked in
        Redis, so that a worker that dies before storing it does not run the job again."""
        loops = [gevent.spawn(mw.worker.writer.run_marks) for mw in self.live()]
        gevent.sleep(0)
        gevent.sleep(0)
        gevent.killall(loops)
        for mw in self.live():
            for name in mw.unmarked:
                p = mw.pending.get(name)
                if p is not None and p.mark:
                    p.job.marked = True
            mw.unmarked = []

    @precondition(lambda self: any(w.alive and w.kills for w in self.workers))
    @rule(worker=st.integers(0, 2))
    def heartbeat(self, worker: int) -> None:
        """A worker's heartbeat: it takes its kill requests (a cancelled job that runs will end as cancel; one
        that ended meanwhile is not affected)."""
        mw = self.pick(worker, [w for w in self.live() if w.kills])
        kills = self.beat(mw)
        assert set(kills) == mw.kills, f"kill requests {kills}, expected {mw.kills}"
        running = {str(i) for i in mw.worker.jobs}
        mw.cancel_early |= mw.kills & running
        mw.kills = set()

    @precondition(lambda self: any(j.id is not None for j in self.jobs))
    @rule(job=st.integers(0, 30))
    def cancel(self, job: int) -> None:
        """``Job.cancel()``: a runnable document becomes ``cancel`` (a waiting id stays where it is, the dequeue
        drops it), a job in flight is asked to stop."""
        j = self.pick(job, [j for j in self.jobs if j.id is not None])
        assert j.id is not None
        inflight = j.loc is not None and j.loc[0] == "i"
        try:
            done = Job(j.id).cancel()
        except JobNotFound:
            assert j.doc is None and not inflight, f"{j.name}: JobNotFound"
            return
        if j.doc is None:
            assert done and inflight
        elif j.doc in S.RUNNABLE_STATUSES:
            assert done
            j.doc = S.CANCEL
        else:
            assert not done
            return
        if inflight:
            assert j.loc is not None
            self.worker(j.loc[1]).kills.add(j.id)

    @precondition(lambda self: any(j.doc is not None for j in self.jobs))
    @rule(job=st.integers(0, 30), queue=st.sampled_from(("qa", "qb")))
    def requeue(self, job: int, queue: str) -> None:
        """``Job.requeue(queue=...)``: any job but a queued one or one running on a live worker goes to ``queue``
        (from wherever it was: its old list or delayed set, to the tail; a dead worker's hands, to the head)."""
        j = self.pick(job, [j for j in self.jobs if j.doc is not None])
        assert j.id is not None
        owner = self.worker(j.loc[1]) if j.loc is not None and j.loc[0] == "i" else None
        try:
            done = Job(j.id).requeue(queue=queue)
        except MRQError:
            assert owner is not None and owner.alive, f"{j.name} at {j.loc}: requeue refused"
            return
        assert owner is None or not owner.alive, f"{j.name} requeued while it runs on a live worker"
        if j.doc == S.QUEUED:
            assert not done
            return
        assert done
        released: Counter[str] = Counter()
        j.doc, j.retries, j.datedue, j.not_before = S.QUEUED, 0, None, 0.0
        self.to_regular(j, queue)
        j.loc, j.parked_due, j.marked = ("q", queue), None, False
        if owner is not None:  # out of the dead worker's hands; its slot is free
            seen("a dead worker's job is requeued by hand")
            owner.pending.pop(j.name, None)
            if j.slot:
                j.slot = False
                released[j.path] += 1
        self.woken(released)

    @precondition(lambda self: any(self.holds(w) for w in self.live()))
    @rule(worker=st.integers(0, 2))
    def kill_worker(self, worker: int) -> None:
        """A worker with jobs in flight dies (SIGKILL): its heartbeat is gone, and what its writer held; its end
        marks stay."""
        mw = self.pick(worker, [w for w in self.live() if self.holds(w)])
        mw.alive = False
        self.broker.redis.delete(self.broker.key("hb", mw.id))

    def cleaner(self) -> Cleaner:
        """The cleaning plugin's passes, with no wait: Redis has been up for long, a dead worker is dead."""
        self.write_marks()  # the passes yield to the marks loops (gevent.sleep): let them run first
        cleaner = Cleaner(self.config)
        cleaner.confirm_delay = lambda: 0.0  # type: ignore[method-assign]
        cleaner.redis_settled = lambda: True  # type: ignore[method-assign]
        return cleaner

    @precondition(lambda self: any(not w.alive and not w.recovered for w in self.workers))
    @rule()
    def recover(self) -> None:
        """The cleaning plugin's dead-worker pass (``Cleaner.requeue_dead_workers``): the jobs in flight on dead
        workers are put back (a raw job with no document into its raw queue), their marked ends stored instead,
        a job that killed ``MAX_DEATHS`` workers running alone dropped; their slots freed."""
        cleaner = self.cleaner()
        self.recoveries = []
        cleaner.requeue_dead_workers()
        results = dict(self.recoveries)
        released: Counter[str] = Counter()
        for mw in self.workers:
            if mw.alive or mw.recovered:
                continue
            mw.recovered = True
            mine = [j for j in self.jobs if j.loc is not None and j.loc[0] == "i" and j.loc[1] == mw.id]
            if not mine:
                assert mw.id not in results
                continue
            result = results[mw.id]
            recovered = {j.id for j in mine if j.marked}
            assert set(result["recovered"]) == recovered, f"ends stored: {result['recovered']}, marked: {recovered}"
            others = [j for j in mine if j.id not in recovered]
            alone = len(others) == 1
            assert set(result["requeued"]) | set(result["poisoned"]) == {j.id for j in others}
            for j in mine:
                assert j.loc is not None
                p = mw.pending.pop(j.name, Pending(j))
                if j.id in recovered:
                    seen("a dead worker's marked end is stored")
                    self.apply_write(j, p, mw.id)
                    self.apply_ack(j, p, released)
                    continue
                if j.slot:
                    j.slot = False
                    released[j.path] += 1
                poison = alone and j.doc is not None and j.deaths + 1 >= MAX_DEATHS
                assert (j.id in result["poisoned"]) == poison, f"{j.name} poisoned: {j.id in result['poisoned']}"
                if poison:
                    seen("a poison job is dropped")
                    j.loc = None
                    if j.doc in S.RUNNABLE_STATUSES:
                        j.doc, j.deaths = S.MAXWORKERDEATHS, j.deaths + 1
                elif j.doc is None:  # a raw job with no document: its payload goes back
                    assert j.raw_queue is not None
                    j.loc, j.id = ("r", j.raw_queue, j.score), None
                else:
                    if j.payload is not None:  # a raw job with a document: a regular job on its retry queue
                        self.to_regular(j, j.queue)
                        j.loc = ("q", j.queue)
                    else:
                        j.loc = ("q", j.loc[2])
                    if j.doc in (S.QUEUED, S.RETRY, S.INTERRUPT) or \
                            (j.doc == S.STARTED and j.doc_worker in (mw.id, None)):
                        j.doc = S.QUEUED
                        j.deaths += 1 if alone else 0
            assert not mw.pending, "a dead worker's writer held statuses of jobs not in flight"
        self.woken(released)

    @precondition(lambda self: len(self.live()) > 0 and len(self.jobs) > 0)
    @rule()
    def lose_redis(self) -> None:
        """Redis loses its data (FLUSHDB). Every live worker's next heartbeat writes its in-flight records again,
        then the cleaning plugin rebuilds the queues from MongoDB (``Cleaner.rebuild``): queued documents to
        their queue (or its delayed set), retries to the delayed set, interrupted ones and those started on a
        dead worker to the head. Raw jobs without a document are lost, and so are kill requests and end marks."""
        cleaner = self.cleaner()
        if any(j.loc is not None and j.loc[0] == "i" for j in self.jobs):
            seen("Redis loses its data while jobs are in flight")
        self.broker.redis.flushdb()
        CLOCK.now += TICK
        for mw in self.live():
            self.beat(mw)
        cleaner.rebuild()
        for mw in self.workers:
            mw.recovered = mw.recovered or not mw.alive  # nothing of theirs is left in Redis
            mw.kills = set()
        for j in self.jobs:
            j.marked, j.parked_due = False, None
            if j.loc is not None and j.loc[0] == "i" and self.worker(j.loc[1]).alive:
                # Its record is written again by its worker, and its slot if it still runs.
                j.slot = j.slot and self.runs_on(j, self.worker(j.loc[1]))
                continue
            j.slot = False
            if j.doc is None:  # a raw job that stored nothing: lost
                j.loc = None
                if j.payload is not None:
                    j.id = None
                continue
            if j.doc == S.QUEUED and j.datedue is not None and j.datedue > CLOCK.now:
                j.loc = ("z", j.queue, j.datedue)
            elif j.doc == S.QUEUED:
                j.loc = ("q", j.queue)
            elif j.doc == S.RETRY:
                assert j.dateretry is not None
                j.loc = ("z", j.queue, j.dateretry)
            elif j.doc in (S.INTERRUPT, S.STARTED):
                j.loc, j.doc = ("q", j.queue), S.QUEUED
            else:
                j.loc = None
                continue
            self.to_regular(j, j.queue)
        for mw in self.workers:
            if not mw.alive:
                mw.pending = {}

    @precondition(lambda self: any(j.loc is not None and j.loc[0] in ("z", "r", "p") and not self.due(j.loc)
                                   for j in self.jobs))
    @rule(ticks=st.sampled_from((1, 2, 8, 24, 48)))
    def time_passes(self, ticks: int) -> None:
        """The clock moves on: delayed jobs, retries, timed-set members and fallbacks of parked jobs fall due."""
        CLOCK.now += ticks * TICK

    # ------------------------------------------------------------------ invariants
    def observe(self) -> dict[str, list[Loc]]:
        """Every place Redis has a job: key (regular id, raw payload) -> places."""
        b, r = self.broker, self.broker.redis
        seen: dict[str, list[Loc]] = defaultdict(list)
        for q in REGULAR:
            for i in r.lrange(b.queue_key(q), 0, -1):
                seen[_s(i)].append(("q", q))
            for i, score in r.zrange(b.delayed_key(q), 0, -1, withscores=True):
                seen[_s(i)].append(("z", q, score))
        for q, (kind, _, _) in RAW.items():
            key = b.queue_key(q)
            members: list[tuple[Any, float | None]]
            if kind == "l":
                members = [(m, None) for m in r.lrange(key, 0, -1)]
            elif kind == "s":
                members = [(m, None) for m in r.smembers(key)]
            else:
                members = list(r.zrange(key, 0, -1, withscores=True))
            for m, score in members:
                seen[_s(m)].append(("r", q, score))
            for m, score in r.zrange(b.delayed_key(q), 0, -1, withscores=True):
                pid, _, rest = _s(m).partition(" ")
                parked_score, _, payload = rest.partition(" ")
                seen[payload].append(("p", q, score, pid))
        records = b.inflight()
        assert len(records) == r.hlen(b.inflight_key), "an in-flight record does not parse"
        for rec in records:
            seen[rec.payload if rec.payload is not None else rec.job_id].append(("i", rec.worker_id, rec.queue))
        return seen

    @invariant()
    def one_place(self) -> None:
        """Every job is in exactly one place, the one the model says; nothing else is in Redis."""
        seen = self.observe()
        keys = set()
        for j in self.jobs:
            if j.loc is None:
                if j.payload is not None or j.id is not None:
                    got = seen.get(j.payload if j.payload is not None else j.id, [])  # type: ignore[arg-type]
                    assert not got, f"{j.name} ({j.doc}) should be nowhere, Redis has it at {got}"
                continue
            keys.add(j.key)
            assert seen.get(j.key) == [j.loc], f"{j.name} ({j.doc}) should be at {j.loc}, Redis has {seen.get(j.key)}"
        unknown = set(seen) - keys
        assert not unknown, f"Redis has jobs the model does not know: {[(k, seen[k]) for k in unknown]}"

    @invariant()
    def slots(self) -> None:
        """Slots held per task = the jobs that took one and whose end (or death) is not acknowledged; each
        parked job has one waiting entry, scored by its fallback's due time; no job has two."""
        b, r = self.broker, self.broker.redis
        for path, limit in LIMITS.items():
            if not limit:
                continue
            holders = {_s(m) for m in r.zrange(b.key("sem", path), 0, -1)}
            expected = {j.id for j in self.jobs if j.slot and j.path == path}
            assert holders == expected, f"{path}: slots held by {holders}, expected {expected}"
            assert len(holders) <= limit
            entries: dict[str, list[tuple[str, float]]] = defaultdict(list)
            for m, score in r.zrange(b.key("semwait", path), 0, -1, withscores=True):
                queue, _, member = _s(m).partition(" ")
                entries[member.split(" ", 1)[0]].append((queue, score))
            for job_id, es in entries.items():
                assert len(es) == 1, f"job {job_id} has {len(es)} waiting entries for {path}: {es}"
            for j in self.jobs:
                if j.path == path and self.is_parked(j):
                    assert j.loc is not None
                    assert entries.get(j.id or "") == [(j.loc[1], j.parked_due)], \
                        f"{j.name} parked at {j.loc} has waiting entries {entries.get(j.id or '')}"
        held = {_s(k): _s(v) for k, v in r.hgetall(b.key("semheld")).items()}
        assert held == {j.id: j.path for j in self.jobs if j.slot}, f"semheld {held}"

    @invariant()
    def marks(self) -> None:
        """An end mark exists only for a job that ended and is still in flight."""
        marks = {_s(k) for k in self.broker.redis.hkeys(self.broker.key("done"))}
        expected = {j.id for j in self.jobs if j.marked}
        assert marks == expected, f"end marks {marks}, expected {expected}"

    @invariant()
    def nothing_lost(self) -> None:
        """A job whose document says it waits or runs is in Redis (only raw jobs with no document die with
        Redis's data)."""
        for j in self.jobs:
            if j.doc in S.RUNNABLE_STATUSES:
                assert j.loc is not None, f"{j.name} ({j.doc}) is nowhere in Redis"

    @invariant()
    def documents(self) -> None:
        """Each document's status is the one the model expects."""
        docs = {str(d["_id"]): d["status"] for d in self.db.find({}, {"status": 1})}
        expected = {j.id: j.doc for j in self.jobs if j.doc is not None}
        assert docs == expected, f"documents {docs}, expected {expected}"


def run_model(config: Any, examples: int = EXAMPLES, steps: int = STEPS) -> None:
    BrokerModel.config = config
    run_state_machine_as_test(BrokerModel, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]))


def test_the_broker_follows_its_model(model_context: Any) -> None:
    SEEN.clear()
    run_model(model_context)
    print("broker model:", dict(SEEN))



# ---------------------------------------------------------------------------------------------------------------
# Counterexamples found by the model, kept as plain tests: each is a script of the model's rules, checked after
# every step. Each failed before the kernel change named in its docstring.
# ---------------------------------------------------------------------------------------------------------------

STEP, SOLO = TASK + "Step", TASK + "Solo"


class Script:
    """Runs rules of a fresh :class:`BrokerModel` by name, checking every invariant after each."""

    def __init__(self, config: Any) -> None:
        BrokerModel.config = config
        self.model = BrokerModel()

    def __getattr__(self, name: str) -> Callable[..., None]:
        rule_ = getattr(self.model, name)

        def step(**kwargs: Any) -> None:
            rule_(**kwargs)
            for check in (self.model.one_place, self.model.slots, self.model.marks, self.model.nothing_lost,
                          self.model.documents):
                check()

        return step

    def close(self) -> None:
        self.model.teardown()


@pytest.fixture
def script(model_context: Any) -> Iterator[Script]:
    s = Script(model_context)
    try:
        yield s
    finally:
        s.close()


def dequeue(s: Script, worker: int = 0, count: int = 1) -> None:
    s.dequeue(worker=worker, count=count, order=list(QUEUES), first=len(QUEUES), busy=False)


def test_an_end_acknowledged_before_its_mark_is_written_leaves_no_mark(script: Script) -> None:
    """The marks loop ran after the writer had acknowledged the job: the mark outlived its run, and a later run of
    the job on a worker that dies would be "recovered" with this old end instead of running. Fixed: an end is
    marked only while its job is in flight on the worker (``Broker.mark_done``), and an acknowledged end is no
    longer waiting to be marked (``StatusWriter``)."""
    script.enqueue(queue="qa", path=STEP, n=1, delay=0, unique="no")
    dequeue(script)
    script.end(worker=0, job=0, outcome="success", delay=0, flush=True)
    script.write_marks()


def test_an_end_acknowledged_then_dequeued_again_by_its_worker_leaves_no_mark(script: Script) -> None:
    """The same, when the job (a retry due at once) is in flight on the same worker again when the mark is written:
    the in-flight check alone let it through. Fixed: the writer drops the marks of the ends it acknowledged."""
    script.enqueue(queue="qa", path=STEP, n=1, delay=0, unique="no")
    dequeue(script)
    script.end(worker=0, job=0, outcome="retry", delay=0, flush=True)
    dequeue(script)
    script.write_marks()


def test_a_requeue_out_of_a_dead_worker_drops_its_end_mark(script: Script) -> None:
    """``Job.requeue`` of a job that had ended on a worker that died before storing it: the job runs again, its old
    end mark must go (the recovery of the next run would store it). Fixed: ``_REQUEUE_INFLIGHT`` drops the marks of
    the records it requeues or drops."""
    script.enqueue(queue="qa", path=STEP, n=1, delay=0, unique="no")
    dequeue(script)
    script.flush_writer(worker=0)  # "started" is stored: the job may be requeued
    script.end(worker=0, job=0, outcome="success", delay=0, flush=False)
    script.write_marks()
    script.kill_worker(worker=0)
    script.requeue(job=0, queue="qb")


def test_redis_losing_its_data_keeps_the_slots_of_running_jobs(script: Script) -> None:
    """A running job of a task with max_concurrency lost its slot with Redis's data: another job of the task could
    run beside it. Fixed: the worker writes the slots of its running jobs again with their in-flight records
    (``Worker._record_inflight_again``, ``Broker.record_inflight(slots=)``)."""
    script.enqueue(queue="qa", path=SOLO, n=2, delay=0, unique="no")
    dequeue(script)
    script.lose_redis()
    dequeue(script)  # the other job waits for the slot


def test_a_kill_request_taken_after_its_job_ended_does_not_cancel_a_later_run(script: Script) -> None:
    """A job cancelled while it ran ended before its worker took the kill request; the worker kept the request and
    cancelled the job's next run on it (here after ``Job.requeue``) without running it. Fixed: a kill request
    counts only for a job that runs or is being dequeued (``Worker._kill_job``), and one for a job of a batch that
    did not start is dropped."""
    script.enqueue(queue="qa", path=STEP, n=1, delay=0, unique="no")
    dequeue(script)
    script.cancel(job=0)
    script.end(worker=0, job=0, outcome="success", delay=0, flush=True)
    script.heartbeat(worker=0)
    script.requeue(job=0, queue="qa")
    dequeue(script)
    script.end(worker=0, job=0, outcome="success", delay=0, flush=True)


def test_a_job_that_kills_its_worker_twice_alone_is_dropped(script: Script) -> None:
    """Not a counterexample: the path the random search rarely takes (``MAX_DEATHS`` deaths of a worker running the
    job alone, then ``maxworkerdeaths``), checked the same way."""
    script.enqueue(queue="qa", path=SOLO, n=1, delay=0, unique="no")
    for _ in range(MAX_DEATHS):
        dequeue(script)
        script.kill_worker(worker=0)
        script.recover()
        script.start_worker()
    assert [j.doc for j in script.model.jobs] == [S.MAXWORKERDEATHS]
