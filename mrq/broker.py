"""Everything MRQ keeps in Redis: queues, delayed jobs, in-flight records, heartbeats, pauses, semaphores.

Every key is ``{prefix}:...``: the prefix is a Redis Cluster hash tag, so all of
MRQ's keys live in one slot and every Lua script and MULTI below is valid on a
Cluster. Keys:

=============================  ======  ===================================================
``{p}:q:<queue>``              list    ids waiting to run, popped from the left
``{p}:d:<queue>``              zset    delayed ids, scored by the unix time they are due; a raw queue's jobs
                                       waiting for a max_concurrency slot ("<id> <score|-> <payload>")
``{p}:n:<queue>``              list    wake-up tokens for idle workers (BLPOP), trimmed to 10
``{p}:queues``                 set     queues with ids waiting or delayed (an emptied queue is forgotten)
``{p}:inflight``               hash    job id -> "<worker id> <unix time> <queue>"
``{p}:done``                   hash    job id -> its end (BSON) while its status is being stored
``{p}:hb:<worker id>``         string  worker heartbeat, expires after ``--heartbeat_ttl``
``{p}:kill:<worker id>``       set     ids of running jobs to stop (cancel)
``{p}:paused``                 set     paused queues (``q/`` pauses every ``q/...``)
``{p}:epoch``                  string  marker: missing means Redis lost MRQ's data (set again by a heartbeat)
``{p}:sem:<task path>``        zset    max_concurrency slots: job id scored by expiry
``{p}:semheld``                hash    job id -> task path of each slot taken (recovery frees a dead job's slot)
``{p}:semwait:<task path>``    zset    jobs waiting for a slot ("<queue> <member of d:queue>", one entry per
                                       job), scored by the due time of their fallback; woken by a release
=============================  ======  ===================================================
"""

from __future__ import annotations

import logging
import random
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from bson import ObjectId

from mrq.exceptions import InvalidParams

__all__ = ["Broker", "InFlight", "AckBatch", "RawPopped", "queue_kind", "RAW_SUFFIXES", "check_queue_name",
           "check_job_queue"]

# KEYS: [1] inflight hash, [2] paused set, [3] known-queues set, then for each queue in priority order the
#       triple (queue key, delayed zset, notify list).
# ARGV: [1] worker id, [2] now (unix seconds), [3] max jobs to pop in total, [4] max per queue (parallel
#       strategy; = [3] for sequential), [5] number of queues, then per queue the triple (name, kind, pushback
#       seconds), then at least [3] fresh job ids for raw jobs.
# Kinds (from the queue name, see queue_kind): 'r' regular (list of job ids, with a delayed zset), raw queues
# whose members are the jobs' payloads: 'l' list, 's' set, 'z' sorted set (lowest score first), 't' timed set
# (score = unix time when due; with pushback seconds > 0 a due member is re-scored instead of removed).
# Due delayed ids are moved to their list first, then jobs are popped in queue order and each is recorded in
# flight in the same atomic step: "<worker> <now> <queue>" for an id, "<worker> <now> <queue> <score|-> <payload>"
# for a raw job (under a fresh id; a raw queue's jobs parked in its delayed zset for a max_concurrency slot,
# "<id> <score|-> <payload>", come first when due or woken, under the id they were parked with).
# A queue left with nothing waiting is forgotten (removed from the known set, its notify list deleted): every
# push adds it back in the same atomic step as its ids, so none is missed.
# Returns {flat list of queue, id..., flat list of queue, id, payload, score ('' for lists and sets)...}.
_DEQUEUE = """
local worker, now_s = ARGV[1], ARGV[2]
local now = tonumber(now_s)
local want, per_queue = tonumber(ARGV[3]), tonumber(ARGV[4])
local nq = tonumber(ARGV[5])
local next_id = 6 + 3 * nq
local out, raw = {}, {}
for i = 1, nq do
  local qkey, dkey, nkey = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local name, kind, pushback = ARGV[3 + 3 * i], ARGV[4 + 3 * i], tonumber(ARGV[5 + 3 * i])
  if kind == 'r' then
    local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now_s, 'LIMIT', 0, 1000)
    if #due > 0 then
      redis.call('ZREM', dkey, unpack(due))
      redis.call('RPUSH', qkey, unpack(due))
    end
  end
  local paused = redis.call('SISMEMBER', KEYS[2], name) == 1
  local slash = string.find(name, '/', 1, true)
  if (not paused) and slash then
    paused = redis.call('SISMEMBER', KEYS[2], string.sub(name, 1, slash)) == 1
  end
  local popped = 0
  if want > 0 and not paused then
    local n = math.min(want, per_queue)
    if kind == 'r' then
      local ids = redis.call('LPOP', qkey, n)
      if ids then
        for _, id in ipairs(ids) do
          -- An id already in flight is in a worker's hands: a second copy (two enqueuers raced) is dropped.
          if redis.call('HSETNX', KEYS[1], id, worker .. ' ' .. now_s .. ' ' .. name) == 1 then
            out[#out + 1] = name
            out[#out + 1] = id
            popped = popped + 1
          end
        end
      end
    else
      -- Jobs parked for a max_concurrency slot come first, under the id they were parked with.
      local items, scores, ids = {}, {}, {}
      local parked = redis.call('ZRANGEBYSCORE', dkey, '-inf', now_s, 'LIMIT', 0, n)
      if #parked > 0 then
        redis.call('ZREM', dkey, unpack(parked))
        for j = 1, #parked do
          local pid, score, payload = string.match(parked[j], '^(%S+) (%S+) (.*)$')
          items[j], ids[j] = payload, pid
          if score ~= '-' then scores[j] = score end
        end
      end
      local m = n - #parked
      if m > 0 then
        if kind == 'l' or kind == 's' then
          local fresh
          if kind == 'l' then fresh = redis.call('LPOP', qkey, m) else fresh = redis.call('SPOP', qkey, m) end
          for _, item in ipairs(fresh or {}) do items[#items + 1] = item end
        else
          local flat
          if kind == 'z' then
            flat = redis.call('ZPOPMIN', qkey, m)
          else
            flat = redis.call('ZRANGEBYSCORE', qkey, '-inf', now_s, 'WITHSCORES', 'LIMIT', 0, m)
          end
          local fresh = {}
          for j = 1, #flat, 2 do
            items[#items + 1] = flat[j]
            scores[#items] = flat[j + 1]
            fresh[#fresh + 1] = flat[j]
          end
          if kind == 't' and #fresh > 0 then
            if pushback > 0 then
              for j = 1, #fresh do redis.call('ZADD', qkey, now + pushback, fresh[j]) end
            else
              redis.call('ZREM', qkey, unpack(fresh))
            end
          end
        end
      end
      for j = 1, #items do
        local id = ids[j]
        if not id then
          id = ARGV[next_id]
          next_id = next_id + 1
        end
        local rec = worker .. ' ' .. now_s .. ' ' .. name .. ' ' .. (scores[j] or '-') .. ' ' .. items[j]
        redis.call('HSET', KEYS[1], id, rec)
        raw[#raw + 1] = name
        raw[#raw + 1] = id
        raw[#raw + 1] = items[j]
        raw[#raw + 1] = scores[j] or ''
      end
      popped = #items
    end
    want = want - popped
  end
  local left
  if kind == 'r' or kind == 'l' then
    left = redis.call('LLEN', qkey)
  elseif kind == 's' then
    left = redis.call('SCARD', qkey)
  elseif kind == 'z' then
    left = redis.call('ZCARD', qkey)
  else
    left = redis.call('ZCOUNT', qkey, '-inf', now_s)
  end
  if kind ~= 'r' then
    left = left + redis.call('ZCOUNT', dkey, '-inf', now_s)
  end
  if left > 0 then
    if popped > 0 then
      redis.call('LPUSH', nkey, '1')
      redis.call('LTRIM', nkey, 0, 9)
    end
  elseif string.sub(name, -1) ~= '/' then
    local empty = redis.call('ZCARD', dkey) == 0
    if empty and kind == 't' then
      empty = redis.call('ZCARD', qkey) == 0
    end
    if empty then
      redis.call('SREM', KEYS[3], name)
      redis.call('DEL', nkey)
    end
  end
end
return {out, raw}
"""

# KEYS: [1] semaphore zset of the task, [2] its waiting zset, [3] in-flight hash, [4] delayed zset of the job's
#       queue, [5] known-queues set, [6] slot index hash (job id -> task path).
# ARGV: [1] job id, [2] limit, [3] now, [4] expiry of the slot, [5] the job's queue ('' = do not defer), [6] due
#       time of a deferred job, [7] task path, [8] the job's member in the delayed zset: its id, or for a raw job
#       "<id> <score|-> <payload>".
# Drops expired holders, then takes a slot if one is free (the job's waiting entry, if any, goes): returns 1. Else,
# with a queue, the job waits, in the same atomic step: out of flight, parked in its queue's delayed zset (due at
# [6], a fallback) and in the task's waiting zset, one entry per job scored by that due time (a release promotes
# it only while it is still parked for that deferral: see _PROMOTE); returns 0.
_ACQUIRE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if #expired > 0 then
  redis.call('ZREM', KEYS[1], unpack(expired))
  redis.call('HDEL', KEYS[6], unpack(expired))
end
local waiter = ARGV[5] .. ' ' .. ARGV[8]
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  redis.call('HSET', KEYS[6], ARGV[1], ARGV[7])
  if ARGV[5] ~= '' then redis.call('ZREM', KEYS[2], waiter) end
  return 1
end
if ARGV[5] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[8])
  redis.call('SADD', KEYS[5], ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[6], waiter)
end
return 0
"""

# KEYS: [1] a waiting zset of a task. ARGV: [1] how many to take.
# Pops the waiters whose fallback is due first ("<queue> <member>" and its due time), to be promoted with _PROMOTE.
_WAKE = """
return redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
"""

# KEYS: [1] delayed zset of a queue, [2] the queue list, [3..] its wake-up lists.
# ARGV: [1] the waiter's member in [1], [2] the due time of its deferral, [3] '1' for a raw queue.
# Wakes a job parked for a slot if it is still parked for that deferral (same due time: a stale waiter, a job
# already run by its fallback and now delayed for another reason, a retry, is left alone): a regular id moves to
# the head of its queue, a raw job becomes due at once (the dequeue takes parked raw jobs first). Returns 1 if woken.
_PROMOTE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('LPUSH', KEYS[2], ARGV[1])
end
for k = 3, #KEYS do
  redis.call('LPUSH', KEYS[k], '1')
  redis.call('LTRIM', KEYS[k], 0, 9)
end
return 1
"""

# KEYS: [1] inflight hash, [2] known-queues set, [3] slot index hash, [4] end marks hash, then for each record its
#       (target queue key, notify list, semaphore zset of the task whose slot it may hold).
# ARGV: [1] expected worker id ('' = any), then triples (job id, target queue name, how): how 'r' pushes the id
# at the head of the target list (a regular job, or a raw job converted to one); 'l', 's', 'z', 't' push a raw
# job's payload (read from its in-flight record) back into its raw queue of that kind, with its score; 'x' only
# drops the record (a job that must not run again).
# Only ids still in flight (on that worker) are requeued, and the max_concurrency slot each holds is freed (it no
# longer runs), and its end mark dropped (that run is over: a later run must not be "recovered" with its end);
# returns {ids requeued, ids whose slot was freed}. Used for orphans, dead workers and Job.requeue.
_REQUEUE_INFLIGHT = """
local out, freed = {}, {}
for i = 2, #ARGV, 3 do
  local id, target, how = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local k = 5 + 3 * ((i - 2) / 3)
  local rec = redis.call('HGET', KEYS[1], id)
  if rec and (ARGV[1] == '' or string.sub(rec, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
    local pushed = true
    if redis.call('ZREM', KEYS[k + 2], id) == 1 then freed[#freed + 1] = id end
    redis.call('HDEL', KEYS[3], id)
    if how == 'x' then
      redis.call('HDEL', KEYS[1], id)
      out[#out + 1] = id
      pushed = false
    elseif how == 'r' then
      redis.call('LPUSH', KEYS[k], id)
    else
      local score, payload = string.match(rec, '^%S+ %S+ %S+ (%S+) (.*)$')
      if payload == nil then
        pushed = false
      elseif how == 'l' then
        redis.call('LPUSH', KEYS[k], payload)
      elseif how == 's' then
        redis.call('SADD', KEYS[k], payload)
      else
        redis.call('ZADD', KEYS[k], tonumber(score) or 0, payload)
      end
    end
    if pushed or how == 'x' then redis.call('HDEL', KEYS[4], id) end
    if pushed then
      redis.call('HDEL', KEYS[1], id)
      redis.call('LPUSH', KEYS[k + 1], '1')
      redis.call('LTRIM', KEYS[k + 1], 0, 9)
      redis.call('SADD', KEYS[2], target)
      out[#out + 1] = id
    end
  end
end
return {out, freed}
"""


# KEYS: [1] end marks hash, [2] in-flight hash. ARGV: [1] worker id ('' = any), then pairs (job id, encoded end).
# Records each end only while its job is in flight (on that worker): a mark written after the job's
# acknowledgement (the marks loop lagging behind the writer, or retrying after an error) would outlive its run, and
# the recovery of a later run of the same job, on a worker that dies, would store this old end instead of running
# the job again. Returns how many were recorded.
_MARK_DONE = """
local n, prefix = 0, ARGV[1] .. ' '
for i = 2, #ARGV, 2 do
  local rec = redis.call('HGET', KEYS[2], ARGV[i])
  if rec and (ARGV[1] == '' or string.sub(rec, 1, #prefix) == prefix) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS: [1] in-flight hash, [2] known-queues set, [3] queue list, [4] delayed zset, [5] list and [6] delayed zset
#       of a queue to move the ids from ('move' mode), [7..] wake-up lists.
# ARGV: [1] queue name, [2] 'tail' | 'head' | 'delayed', [3] '1' to remove the ids from KEYS[5]/KEYS[6] first
# (moving them from another queue: a requeue to another queue never leaves a copy behind), then triples (id,
# due unix time, '1' if the id may be in the list). Pushes the ids that are neither in flight, nor delayed, nor
# (if flagged) in the list, in ARGV order (the first one nearest the head for 'head'); returns them.
_PUSH_UNIQUE = """
if ARGV[3] == '1' then
  for i = 4, #ARGV, 3 do
    redis.call('LREM', KEYS[5], 0, ARGV[i])
    redis.call('ZREM', KEYS[6], ARGV[i])
  end
end
local where = ARGV[2]
local pending, to_scan = {}, 0
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], id) == 0 and not redis.call('ZSCORE', KEYS[4], id) then
    pending[id] = ARGV[i + 2]
    if ARGV[i + 2] == '1' then to_scan = to_scan + 1 end
  end
end
if to_scan > 0 then
  local len = redis.call('LLEN', KEYS[3])
  local start = 0
  while start < len and to_scan > 0 do
    local chunk = redis.call('LRANGE', KEYS[3], start, start + 999)
    for _, id in ipairs(chunk) do
      local flag = pending[id]
      if flag then
        pending[id] = nil
        if flag == '1' then to_scan = to_scan - 1 end
      end
    end
    start = start + 1000
  end
end
local out = {}
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  if pending[id] then
    pending[id] = nil
    out[#out + 1] = id
    if where == 'delayed' then redis.call('ZADD', KEYS[4], ARGV[i + 1], id) end
  end
end
if #out > 0 then
  if where == 'tail' then
    redis.call('RPUSH', KEYS[3], unpack(out))
  elseif where == 'head' then
    for j = #out, 1, -1 do redis.call('LPUSH', KEYS[3], out[j]) end
  end
  if where ~= 'delayed' then
    for k = 7, #KEYS do
      redis.call('LPUSH', KEYS[k], '1')
      redis.call('LTRIM', KEYS[k], 0, 9)
    end
  end
  redis.call('SADD', KEYS[2], ARGV[1])
end
return out
"""


#: Raw queue kinds by the suffix of the queue's root name (before any ``/``), checked in this order.
RAW_SUFFIXES: tuple[tuple[str, str], ...] = (("_timed_set", "t"), ("_sorted_set", "z"), ("_set", "s"), ("_raw", "l"))


def queue_kind(queue: str) -> str:
    """``r`` for a regular queue (job ids), else the raw kind: ``l`` list (``*_raw``), ``s`` set (``*_set``), ``z``
    sorted set (``*_sorted_set``), ``t`` timed set (``*_timed_set``), from the root name (``crawl_set/x`` is a set)."""
    root = queue.split("/", 1)[0]
    for suffix, kind in RAW_SUFFIXES:
        if root.endswith(suffix):
            return kind
    return "r"


def check_queue_name(name: Any) -> str:
    """Return ``name`` if it can name a queue, else raise :class:`InvalidParams` saying why.

    A queue name is non-empty UTF-8 text without whitespace, control characters or commas: in-flight records are
    space-separated, and ``MRQ_QUEUES``/``--queues`` lists split on spaces and commas. Any other character is
    fine (``/`` makes a subqueue; braces leave every key in the ``{prefix}`` hash slot).
    """
    if not isinstance(name, str) or not name:
        raise InvalidParams(f"Queue name {name!r:.200} is invalid: use a non-empty string.")
    bad = next((c for c in name if c.isspace() or c == "," or unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InvalidParams(f"Queue name {name!r:.200} is invalid: it contains {bad!r}; use a name without "
                            "whitespace, control characters or commas (and valid UTF-8).")
    return name


def check_job_queue(name: Any) -> str:
    """:func:`check_queue_name`, and a regular queue: where a job's id may go (a requeue, a retry, a scheduled or
    enqueued job), not a raw queue (its members are payloads, see :mod:`mrq.raw`)."""
    if queue_kind(check_queue_name(name)) != "r":
        raise InvalidParams(f"Queue {name!r:.200} is a raw queue (by its name: it ends in _raw, _set, _sorted_set or "
                            "_timed_set), which holds payloads, not jobs: use a regular queue's name.")
    return name


@dataclass(frozen=True)
class InFlight:
    """A dequeued job not yet acknowledged: who runs it, since when, from which queue; for a raw job, its payload
    (and its score in a sorted or timed set)."""

    job_id: str
    worker_id: str
    since: float
    queue: str
    payload: str | None = None
    score: float | None = None

    @classmethod
    def parse(cls, job_id: str, record: str) -> InFlight:
        """Read a record: ``<worker> <since> <queue>``, or ``<worker> <since> <queue> <score|-> <payload>`` for a
        raw job (a queue name has no space: :func:`check_queue_name`). A record that is neither (a
        queue name with spaces, written before names were checked everywhere) reads as a regular job's.

        :raises ValueError: if the record has no worker, time and queue.
        """
        parts = record.split(" ", 4)
        if len(parts) == 5 and queue_kind(parts[2]) != "r":
            try:
                score = None if parts[3] == "-" else float(parts[3])
                return cls(job_id, parts[0], float(parts[1]), parts[2], parts[4], score)
            except ValueError:
                pass
        try:
            worker, since, queue = record.split(" ", 2)
            return cls(job_id, worker, float(since), queue)
        except ValueError:
            raise ValueError(f"In-flight record of job {job_id!r} is unreadable: {record!r:.200}") from None


@dataclass(frozen=True)
class RawPopped:
    """A raw job popped by :meth:`Broker.dequeue_all`: its queue, the id it runs under, its payload, and its score
    in a sorted or timed set."""

    queue: str
    job_id: str
    payload: str
    score: float | None = None


@dataclass
class AckBatch:
    """Redis changes that follow a batch of MongoDB status writes, applied in one MULTI."""

    done: list[str] = field(default_factory=list)                    # drop the in-flight record
    delayed: list[tuple[str, str, float]] = field(default_factory=list)  # (queue, id, due unix time)
    requeue: list[tuple[str, str]] = field(default_factory=list)      # (queue, id) back at the head
    release: list[tuple[str, str]] = field(default_factory=list)      # (task path, id) semaphore slot
    raw: list[tuple[str, str, float | None]] = field(default_factory=list)  # (raw queue, payload, score) back

    def __bool__(self) -> bool:
        return bool(self.done or self.delayed or self.requeue or self.release or self.raw)

    def extend(self, other: AckBatch) -> None:
        self.done += other.done
        self.delayed += other.delayed
        self.requeue += other.requeue
        self.release += other.release
        self.raw += other.raw


class Broker:
    """MRQ's Redis operations for one client and key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "mrq") -> None:
        self.redis = client
        self.prefix = prefix
        self.tag = "{" + prefix + "}"
        self._dequeue = client.register_script(_DEQUEUE)
        self._acquire = client.register_script(_ACQUIRE)
        self._wake = client.register_script(_WAKE)
        self._promote = client.register_script(_PROMOTE)
        self._requeue_inflight = client.register_script(_REQUEUE_INFLIGHT)
        self._push_unique = client.register_script(_PUSH_UNIQUE)
        self._mark_done = client.register_script(_MARK_DONE)

    # -- keys
    def key(self, *parts: str) -> str:
        return ":".join((self.tag, *parts))

    def queue_key(self, queue: str) -> str:
        return self.key("q", queue)

    def delayed_key(self, queue: str) -> str:
        return self.key("d", queue)

    def notify_keys(self, queue: str) -> list[str]:
        """Wake-up lists to push for ``queue``: its own, and its root's ``root/`` for a subqueue."""
        keys = [self.key("n", queue)]
        if "/" in queue.rstrip("/"):
            keys.append(self.key("n", queue.split("/", 1)[0] + "/"))
        return keys

    @property
    def inflight_key(self) -> str:
        return self.key("inflight")

    # -- enqueue
    def push(self, queue: str, ids: Sequence[str], delay: float = 0) -> None:
        """Append ids to ``queue`` (or to its delayed set when ``delay`` > 0), atomically."""
        pipe = self.redis.pipeline(transaction=True)
        if delay > 0:
            due = time.time() + delay
            pipe.zadd(self.delayed_key(queue), {i: due for i in ids})
        else:
            pipe.rpush(self.queue_key(queue), *ids)
            for nkey in self.notify_keys(queue):
                pipe.lpush(nkey, "1")
                pipe.ltrim(nkey, 0, 9)
        pipe.sadd(self.key("queues"), queue)
        pipe.execute()

    def push_unique(self, queue: str, entries: Sequence[tuple[str, float, bool]], where: str = "tail",
                    move_from: str | None = None) -> list[str]:
        """Push ids to ``queue`` (``tail``/``head`` of its list, or its ``delayed`` set at their due time)
        unless Redis already has them: in flight, delayed, or (when flagged) in the list. Atomic per 1000
        ids; checking the list costs O(its length), so use it for repairs and manual requeues, not on the
        hot path.

        :param entries: ``(job id, due unix time, may_be_in_list)``.
        :param move_from: a queue (this one or another) whose list and delayed set may hold these ids: they are
            removed from it in the same atomic step, then pushed (a job requeued to another queue never runs from
            both; a delayed one runs now).
        :return: the ids pushed.
        """
        moving = bool(move_from)
        old = move_from or queue
        keys = [self.inflight_key, self.key("queues"), self.queue_key(queue), self.delayed_key(queue),
                self.queue_key(old), self.delayed_key(old), *self.notify_keys(queue)]
        seen: set[str] = set()
        unique = [e for e in entries if not (e[0] in seen or seen.add(e[0]))]  # type: ignore[func-returns-value]
        batches = [unique[i:i + 1000] for i in range(0, len(unique), 1000)]
        pushed: list[list[str]] = []
        # For 'head', push the last batch first so that the first id ends nearest the head.
        for batch in (reversed(batches) if where == "head" else batches):
            args: list[Any] = [queue, where, "1" if moving else "0"]
            for job_id, due, scan in batch:
                args += [job_id, repr(float(due)), "1" if scan else "0"]
            pushed.append([_s(i) for i in self._push_unique(keys=keys, args=args)])
        if where == "head":
            pushed.reverse()
        return [i for batch in pushed for i in batch]

    # -- dequeue
    def dequeue(self, worker_id: str, queues: Sequence[str], count: int,
                per_queue: int | None = None) -> list[tuple[str, str]]:
        """Pop up to ``count`` ids from regular ``queues`` in order and record them in flight."""
        return self.dequeue_all(worker_id, queues, count, per_queue)[0]

    def dequeue_all(self, worker_id: str, queues: Sequence[str], count: int, per_queue: int | None = None,
                    pushback: Mapping[str, float] | None = None) -> tuple[list[tuple[str, str]], list[RawPopped]]:
        """Pop up to ``count`` jobs from ``queues`` in priority order, regular ids and raw payloads alike, and
        record each in flight, in one atomic call. Raw jobs get a fresh job id (an ObjectId's hex).

        :param pushback: seconds by raw timed-set queue: a due member is re-scored to now + this instead of
            being removed (the task removes it itself: ``RAW_QUEUES[q]["pushback_seconds"]``).
        :return: ``([(queue, id)...], [RawPopped...])``.
        """
        if not queues or count <= 0:
            return [], []
        keys = [self.inflight_key, self.key("paused"), self.key("queues")]
        args: list[Any] = [worker_id, repr(time.time()), count, per_queue or count, len(queues)]
        raw = False
        for q in queues:
            keys += [self.queue_key(q), self.delayed_key(q), self.key("n", q)]
            kind = queue_kind(q)
            raw = raw or kind != "r"
            args += [q, kind, (pushback or {}).get(q.split("/", 1)[0], 0)]
        if raw:
            args += [str(ObjectId()) for _ in range(count)]
        regular, popped = self._dequeue(keys=keys, args=args)
        return ([(_s(regular[i]), _s(regular[i + 1])) for i in range(0, len(regular), 2)],
                [RawPopped(_s(popped[i]), _s(popped[i + 1]), _s(popped[i + 2]),
                           float(popped[i + 3]) if popped[i + 3] else None) for i in range(0, len(popped), 4)])

    def wait(self, queues: Sequence[str], timeout: float) -> str | None:
        """Block until a job is pushed on one of ``queues`` or ``timeout`` seconds pass; return the queue whose
        wake-up list fired (``q/`` for a push to any subqueue of q), or ``None``."""
        keys = {self.key("n", q): q for q in queues}
        got = self.redis.blpop(list(keys), timeout=max(timeout, 0.01))
        return keys.get(_s(got[0])) if got else None

    def ack(self, batch: AckBatch) -> None:
        """Apply the Redis side of written statuses in one MULTI: the ids stop being in flight."""
        if not batch:
            return
        pipe = self.redis.pipeline(transaction=True)
        if batch.done:
            pipe.hdel(self.inflight_key, *batch.done)
            pipe.hdel(self.key("done"), *batch.done)
        for queue, job_id, due in batch.delayed:
            pipe.zadd(self.delayed_key(queue), {job_id: due})
            pipe.sadd(self.key("queues"), queue)
        for queue, job_id in batch.requeue:
            pipe.lpush(self.queue_key(queue), job_id)
            pipe.sadd(self.key("queues"), queue)
            for nkey in self.notify_keys(queue):
                pipe.lpush(nkey, "1")
                pipe.ltrim(nkey, 0, 9)
        for path, job_id in batch.release:
            pipe.zrem(self.key("sem", path), job_id)
            pipe.hdel(self.key("semheld"), job_id)
        for queue, payload, score in batch.raw:
            self._push_raw(pipe, queue, [payload], {payload: score} if score is not None else None, head=True)
        pipe.execute()
        if batch.release:
            released: dict[str, int] = {}
            for path, _ in batch.release:
                released[path] = released.get(path, 0) + 1
            self.wake_waiters(released)

    # -- end marks: a job's end, known in Redis before its status is stored
    def mark_done(self, marks: Mapping[str, bytes], worker_id: str = "") -> int:
        """Record the ends of jobs whose status is not stored yet (``{job id: encoded end}``, see
        :mod:`mrq.recovery`): if their worker dies before storing them, the end is stored instead of the job
        being run again. Dropped with the job's acknowledgement, or by a requeue of the job.

        Only the ends of jobs still in flight (on ``worker_id``) are recorded: an end that comes after its job's
        acknowledgement would outlive its run (see ``_MARK_DONE``). Returns how many were recorded."""
        if not marks:
            return 0
        args: list[Any] = [worker_id]
        for job_id, mark in marks.items():
            args += [job_id, mark]
        return int(self._mark_done(keys=[self.key("done"), self.inflight_key], args=args))

    def done_marks(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """The end marks of these jobs, for those that have one."""
        if not job_ids:
            return {}
        values = self.redis.hmget(self.key("done"), list(job_ids))
        return {i: v for i, v in zip(job_ids, values, strict=True) if v is not None}

    # -- in-flight records and workers
    def inflight(self, worker_id: str | None = None) -> list[InFlight]:
        """Every dequeued job not yet acknowledged (optionally only those of one worker)."""
        out = []
        for job_id, rec in self.redis.hscan_iter(self.inflight_key, count=1000):
            try:
                record = InFlight.parse(_s(job_id), _s(rec))
            except ValueError as exc:  # never a reason to stop reading the others
                logging.getLogger("mrq.broker").error("%s: skipped (delete it with HDEL %s)", exc, self.inflight_key)
                continue
            if worker_id is None or record.worker_id == worker_id:
                out.append(record)
        return out

    def requeue_inflight(self, records: Iterable[InFlight], worker_id: str = "",
                         as_regular: Mapping[str, str] | None = None, drop: Iterable[str] = ()) -> list[str]:
        """Put in-flight jobs back, if still in flight (on ``worker_id``): a regular id at the head of its queue,
        a raw job's payload back into its raw queue (with its score).

        :param as_regular: ``{raw job id: queue}``: raw jobs whose document exists (a stored status), requeued as
            regular jobs on that queue instead (their payload would run again under a new id).
        :param drop: ids whose record is only removed (jobs that must not run again).
        :return: the ids requeued (or dropped).
        """
        records = list(records)
        if not records:
            return []
        as_regular, drop = as_regular or {}, set(drop)
        held = self.redis.hmget(self.key("semheld"), [r.job_id for r in records])  # the slots they may hold
        keys = [self.inflight_key, self.key("queues"), self.key("semheld"), self.key("done")]
        args: list[Any] = [worker_id]
        paths: dict[str, str] = {}
        for r, path in zip(records, held, strict=True):
            if r.job_id in drop:
                target, how = r.queue, "x"
            elif r.payload is None or r.job_id in as_regular:
                target, how = as_regular.get(r.job_id, r.queue), "r"
            else:
                target, how = r.queue, queue_kind(r.queue)
            if path is not None:
                paths[r.job_id] = _s(path)
            keys += [self.queue_key(target), self.key("n", target), self.key("sem", paths.get(r.job_id, ""))]
            args += [r.job_id, target, how]
        done, freed = self._requeue_inflight(keys=keys, args=args)
        if freed:  # their slots are free: wake as many jobs waiting for them
            released: dict[str, int] = {}
            for job_id in freed:
                released[paths[_s(job_id)]] = released.get(paths[_s(job_id)], 0) + 1
            self.wake_waiters(released)
        return [_s(i) for i in done]

    def heartbeat(self, worker_id: str, ttl: float, value: str = "1") -> list[str]:
        """Refresh the worker's heartbeat and take the kill requests addressed to it."""
        return self.beat(worker_id, ttl, value)[0]

    def beat(self, worker_id: str, ttl: float, value: str = "1") -> tuple[list[str], bool, str]:
        """:meth:`heartbeat`, and in the same MULTI set MRQ's marker key if it is missing: returns the kill
        requests, whether the marker was missing (Redis lost MRQ's data, or was never used: this caller is the
        one, across all workers, to react to it), and the marker's value (it changes when Redis lost its data)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.key("hb", worker_id), value, px=int(ttl * 1000))
        pipe.spop(self.key("kill", worker_id), 1000)
        pipe.set(self.key("epoch"), repr(time.time()), nx=True)
        pipe.get(self.key("epoch"))
        _, kills, marked, epoch = pipe.execute()
        return [_s(k) for k in kills or []], bool(marked), _s(epoch)

    def record_inflight(self, worker_id: str, entries: Sequence[tuple[str, str, str | None, float | None]],
                        slots: Mapping[str, tuple[str, float]] | None = None) -> None:
        """Write in-flight records again (``(job id, queue, raw payload or None, score or None)``): after Redis lost
        its data, a live worker puts back the records of the jobs it runs or has not acknowledged yet, so that
        nothing requeues them while they are in its hands; and the max_concurrency slots its running jobs hold
        (``{job id: (task path, expiry)}``), so that the limit holds (a slot is taken again even if others took
        the free ones meanwhile: the job runs)."""
        if slots:
            pipe = self.redis.pipeline(transaction=True)
            for job_id, (path, expiry) in slots.items():
                pipe.zadd(self.key("sem", path), {job_id: expiry})
                pipe.hset(self.key("semheld"), job_id, path)
            pipe.execute()
        if not entries:
            return
        now = repr(time.time())
        mapping = {}
        for job_id, queue, payload, score in entries:
            mapping[job_id] = (f"{worker_id} {now} {queue}" if payload is None else
                               f"{worker_id} {now} {queue} {'-' if score is None else repr(score)} {payload}")
        self.redis.hset(self.inflight_key, mapping=mapping)

    def forget_worker(self, worker_id: str) -> None:
        self.redis.delete(self.key("hb", worker_id), self.key("kill", worker_id))

    def alive(self, worker_ids: Sequence[str]) -> dict[str, bool]:
        """Whether each worker's heartbeat is current."""
        if not worker_ids:
            return {}
        values = self.redis.mget([self.key("hb", w) for w in worker_ids])
        return {w: v is not None for w, v in zip(worker_ids, values, strict=True)}

    def request_kill(self, job_ids: Sequence[str]) -> list[str]:
        """Ask the workers running these ids to stop them; returns the ids found in flight."""
        if not job_ids:
            return []
        recs = self.redis.hmget(self.inflight_key, list(job_ids))
        pipe = self.redis.pipeline(transaction=True)
        found = []
        for job_id, rec in zip(job_ids, recs, strict=True):
            if rec:
                worker = _s(rec).split(" ", 1)[0]
                pipe.sadd(self.key("kill", worker), job_id)
                pipe.expire(self.key("kill", worker), 3600)
                found.append(job_id)
        if found:
            pipe.execute()
        return found

    # -- concurrency
    def acquire(self, path: str, job_id: str, limit: int, ttl: float, defer_to: str | None = None,
                defer_for: float | None = None, parked: str | None = None) -> bool:
        """Take one of ``limit`` slots of task ``path`` for ``ttl`` seconds (released by :meth:`ack`, or by
        :meth:`requeue_inflight` if the job does not run after all).

        :param defer_to: when every slot is taken, make the job wait in this queue (see ``_ACQUIRE``): it is
            woken by the next release of a slot of the task, or runs again after ``defer_for`` seconds (default:
            5 to 10, jittered) whatever happens.
        :param parked: the job's member in the queue's delayed zset while it waits (default: its id; a raw job:
            ``"<id> <score|-> <payload>"``, see :meth:`parked_raw`).
        """
        now = time.time()
        due = now + (defer_for if defer_for is not None else 5 + 5 * random.random())
        keys = [self.key("sem", path), self.key("semwait", path), self.inflight_key,
                self.delayed_key(defer_to or "_"), self.key("queues"), self.key("semheld")]
        return bool(self._acquire(keys=keys, args=[job_id, limit, repr(now), repr(now + ttl), defer_to or "",
                                                   repr(due), path, parked or job_id]))

    @staticmethod
    def parked_raw(job_id: str, payload: str, score: float | None) -> str:
        """A raw job's member in its raw queue's delayed zset while it waits for a slot."""
        return f"{job_id} {'-' if score is None else repr(score)} {payload}"

    def wake_waiters(self, released: Mapping[str, int]) -> int:
        """Wake, for each task path, as many waiting jobs as slots were released (``{path: count}``); returns how
        many were woken. One round trip per path, plus one per waiter tried (a stale one is skipped)."""
        promoted = 0
        for path, count in released.items():
            while count > 0:
                flat = self._wake(keys=[self.key("semwait", path)], args=[count])
                if not flat:
                    break
                for i in range(0, len(flat), 2):
                    queue, _, member = _s(flat[i]).partition(" ")
                    keys = [self.delayed_key(queue), self.queue_key(queue), *self.notify_keys(queue)]
                    if self._promote(keys=keys, args=[member, _s(flat[i + 1]),
                                                      "1" if queue_kind(queue) != "r" else "0"]):
                        promoted += 1
                        count -= 1
        return promoted

    # -- queues
    def known_queues(self) -> list[str]:
        """Queues with ids waiting or delayed (a queue is forgotten by the dequeue that empties it)."""
        return sorted(_s(q) for q in self.redis.smembers(self.key("queues")))

    def sizes(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(waiting, delayed) counts of each queue, in one round trip. For a raw timed set, waiting = due
        members and delayed = members not due yet; a raw queue's delayed count includes its jobs waiting for a
        max_concurrency slot."""
        pipe = self.redis.pipeline(transaction=False)
        now = repr(time.time())
        for q in queues:
            kind, key = queue_kind(q), self.queue_key(q)
            if kind in ("r", "l"):
                pipe.llen(key)
            elif kind == "s":
                pipe.scard(key)
            elif kind == "z":
                pipe.zcard(key)
            else:
                pipe.zcount(key, "-inf", now)
            if kind == "t":
                pipe.zcount(key, "(" + now, "+inf")
            pipe.zcard(self.delayed_key(q))
        values = pipe.execute()
        out: dict[str, tuple[int, int]] = {}
        i = 0
        for q in queues:
            if queue_kind(q) == "t":  # due members; members in the future and jobs parked for a slot
                out[q] = (values[i], values[i + 1] + values[i + 2])
                i += 3
            else:
                out[q] = (values[i], values[i + 1])
                i += 2
        return out

    def push_raw(self, queue: str, payloads: Sequence[str], scores: Mapping[str, float] | None = None) -> None:
        """Add payloads to a raw queue in one MULTI (the queue's kind decides how; ``scores`` for sorted and
        timed sets, default now), marking it known and waking its workers."""
        pipe = self.redis.pipeline(transaction=True)
        self._push_raw(pipe, queue, payloads, scores)
        pipe.execute()

    def _push_raw(self, pipe: Any, queue: str, payloads: Sequence[str], scores: Mapping[str, float] | None,
                  head: bool = False) -> None:
        kind, key = queue_kind(queue), self.queue_key(queue)
        if kind == "l":
            (pipe.lpush if head else pipe.rpush)(key, *payloads)
        elif kind == "s":
            pipe.sadd(key, *payloads)
        elif kind in ("z", "t"):
            default = time.time() if kind == "t" else 0.0
            pipe.zadd(key, {p: (scores or {}).get(p, default) for p in payloads})
        else:
            raise ValueError(f"Queue {queue!r} is not a raw queue (its name must end in _raw, _set, _sorted_set or "
                             "_timed_set)")
        pipe.sadd(self.key("queues"), queue)
        for nkey in self.notify_keys(queue):
            pipe.lpush(nkey, "1")
            pipe.ltrim(nkey, 0, 9)

    def list_ids(self, queue: str, start: int = 0, stop: int = -1) -> list[str]:
        return [_s(i) for i in self.redis.lrange(self.queue_key(queue), start, stop)]

    def remove(self, queue: str, ids: Sequence[str]) -> int:
        """Remove ids from a queue's list and delayed set (O(n) in the queue length)."""
        pipe = self.redis.pipeline(transaction=True)
        for i in ids:
            pipe.lrem(self.queue_key(queue), 0, i)
            pipe.zrem(self.delayed_key(queue), i)
        return sum(pipe.execute())

    def empty(self, queue: str) -> None:
        self.redis.delete(self.queue_key(queue), self.delayed_key(queue))

    def pause(self, queue: str) -> None:
        self.redis.sadd(self.key("paused"), queue)

    def resume(self, queue: str) -> None:
        self.redis.srem(self.key("paused"), queue)

    def paused(self) -> set[str]:
        return {_s(q) for q in self.redis.smembers(self.key("paused"))}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
