"""Everything MRQ keeps in Redis: queues, delayed jobs, in-flight records, heartbeats, pauses, semaphores.

Every key is ``{prefix}:...``: the prefix is a Redis Cluster hash tag, so all of
MRQ's keys live in one slot and every Lua script and MULTI below is valid on a
Cluster. Keys:

=============================  ======  ===================================================
``{p}:q:<queue>``              list    ids waiting to run, popped from the left
``{p}:d:<queue>``              zset    delayed ids, scored by the unix time they are due
``{p}:n:<queue>``              list    wake-up tokens for idle workers (BLPOP), trimmed to 10
``{p}:queues``                 set     queues with ids waiting or delayed (an emptied queue is forgotten)
``{p}:inflight``               hash    job id -> "<worker id> <unix time> <queue>"
``{p}:hb:<worker id>``         string  worker heartbeat, expires after ``--heartbeat_ttl``
``{p}:kill:<worker id>``       set     ids of running jobs to stop (cancel)
``{p}:paused``                 set     paused queues (``q/`` pauses every ``q/...``)
``{p}:sem:<task path>``        zset    max_concurrency slots: job id scored by expiry
=============================  ======  ===================================================
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

__all__ = ["Broker", "InFlight", "AckBatch"]

# KEYS: [1] inflight hash, [2] paused set, [3] known-queues set, then for each queue in priority order the
#       triple (queue list, delayed zset, notify list).
# ARGV: [1] worker id, [2] now (unix seconds), [3] max ids to pop in total,
#       [4] max ids per queue (parallel strategy; = [3] for sequential), then the queue names.
# Due delayed ids are moved to their list first (all listed queues), then ids are
# popped in queue order and recorded in-flight in the same atomic step. A queue left with
# neither waiting nor delayed ids is forgotten (removed from the known set, its notify list
# deleted): every push adds it back in the same atomic step as its ids, so none is missed.
# Returns a flat list: queue, id, queue, id...
_DEQUEUE = """
local worker, now = ARGV[1], ARGV[2]
local want, per_queue = tonumber(ARGV[3]), tonumber(ARGV[4])
local nq = (#KEYS - 3) / 3
local out = {}
for i = 1, nq do
  local qkey, dkey, nkey = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local name = ARGV[4 + i]
  local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    redis.call('ZREM', dkey, unpack(due))
    redis.call('RPUSH', qkey, unpack(due))
  end
  local paused = redis.call('SISMEMBER', KEYS[2], name) == 1
  local slash = string.find(name, '/', 1, true)
  if (not paused) and slash then
    paused = redis.call('SISMEMBER', KEYS[2], string.sub(name, 1, slash)) == 1
  end
  local popped = false
  if want > 0 and not paused then
    local ids = redis.call('LPOP', qkey, math.min(want, per_queue))
    if ids then
      popped = true
      for _, id in ipairs(ids) do
        redis.call('HSET', KEYS[1], id, worker .. ' ' .. now .. ' ' .. name)
        out[#out + 1] = name
        out[#out + 1] = id
      end
      want = want - #ids
    end
  end
  local left = redis.call('LLEN', qkey)
  if left > 0 then
    if popped then
      redis.call('LPUSH', nkey, '1')
      redis.call('LTRIM', nkey, 0, 9)
    end
  elseif string.sub(name, -1) ~= '/' and redis.call('ZCARD', dkey) == 0 then
    redis.call('SREM', KEYS[3], name)
    redis.call('DEL', nkey)
  end
end
return out
"""

# KEYS: [1] semaphore zset of the task. ARGV: [1] job id, [2] limit, [3] now, [4] expiry time.
# Drops expired holders, then takes a slot if one is free. Returns 1 if taken, else 0.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  return 1
end
return 0
"""

# KEYS: [1] inflight hash, [2] known-queues set, then for each id its (queue list, notify list).
# ARGV: [1] expected worker id ('' = any), then pairs (job id, queue name).
# Requeues (at the head of their queue) the ids still in flight on that worker;
# returns the ids it requeued. Used for orphans and dead workers.
_REQUEUE_INFLIGHT = """
local out = {}
for i = 2, #ARGV, 2 do
  local id, k = ARGV[i], i + 1
  local rec = redis.call('HGET', KEYS[1], id)
  if rec and (ARGV[1] == '' or string.sub(rec, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
    redis.call('HDEL', KEYS[1], id)
    redis.call('LPUSH', KEYS[k], id)
    redis.call('LPUSH', KEYS[k + 1], '1')
    redis.call('LTRIM', KEYS[k + 1], 0, 9)
    redis.call('SADD', KEYS[2], ARGV[i + 1])
    out[#out + 1] = id
  end
end
return out
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


@dataclass(frozen=True)
class InFlight:
    """A dequeued job id not yet acknowledged: who runs it, since when, from which queue."""

    job_id: str
    worker_id: str
    since: float
    queue: str


@dataclass
class AckBatch:
    """Redis changes that follow a batch of MongoDB status writes, applied in one MULTI."""

    done: list[str] = field(default_factory=list)                    # drop the in-flight record
    delayed: list[tuple[str, str, float]] = field(default_factory=list)  # (queue, id, due unix time)
    requeue: list[tuple[str, str]] = field(default_factory=list)      # (queue, id) back at the head
    release: list[tuple[str, str]] = field(default_factory=list)      # (task path, id) semaphore slot

    def __bool__(self) -> bool:
        return bool(self.done or self.delayed or self.requeue or self.release)

    def extend(self, other: AckBatch) -> None:
        self.done += other.done
        self.delayed += other.delayed
        self.requeue += other.requeue
        self.release += other.release


class Broker:
    """MRQ's Redis operations for one client and key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "mrq") -> None:
        self.redis = client
        self.prefix = prefix
        self.tag = "{" + prefix + "}"
        self._dequeue = client.register_script(_DEQUEUE)
        self._acquire = client.register_script(_ACQUIRE)
        self._requeue_inflight = client.register_script(_REQUEUE_INFLIGHT)
        self._push_unique = client.register_script(_PUSH_UNIQUE)

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
        """Pop up to ``count`` ids from ``queues`` in order and record them in flight."""
        if not queues or count <= 0:
            return []
        keys = [self.inflight_key, self.key("paused"), self.key("queues")]
        for q in queues:
            keys += [self.queue_key(q), self.delayed_key(q), self.key("n", q)]
        flat = self._dequeue(keys=keys, args=[worker_id, repr(time.time()), count, per_queue or count,
                                              *queues])
        return [(_s(flat[i]), _s(flat[i + 1])) for i in range(0, len(flat), 2)]

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
        pipe.execute()

    # -- in-flight records and workers
    def inflight(self, worker_id: str | None = None) -> list[InFlight]:
        """Every dequeued id not yet acknowledged (optionally only those of one worker)."""
        out = []
        for job_id, rec in self.redis.hscan_iter(self.inflight_key, count=1000):
            worker, since, queue = _s(rec).split(" ", 2)
            if worker_id is None or worker == worker_id:
                out.append(InFlight(_s(job_id), worker, float(since), queue))
        return out

    def requeue_inflight(self, records: Iterable[InFlight], worker_id: str = "") -> list[str]:
        """Put in-flight ids back at the head of their queue, if still in flight (on ``worker_id``)."""
        records = list(records)
        if not records:
            return []
        keys, args = [self.inflight_key, self.key("queues")], [worker_id]
        for r in records:
            keys += [self.queue_key(r.queue), self.key("n", r.queue)]
            args += [r.job_id, r.queue]
        return [_s(i) for i in self._requeue_inflight(keys=keys, args=args)]

    def heartbeat(self, worker_id: str, ttl: float, value: str = "1") -> list[str]:
        """Refresh the worker's heartbeat and take the kill requests addressed to it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.key("hb", worker_id), value, px=int(ttl * 1000))
        pipe.spop(self.key("kill", worker_id), 1000)
        _, kills = pipe.execute()
        return [_s(k) for k in kills or []]

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
    def acquire(self, path: str, job_id: str, limit: int, ttl: float) -> bool:
        """Take one of ``limit`` slots of task ``path`` for ``ttl`` seconds (released by :meth:`ack`)."""
        now = time.time()
        return bool(self._acquire(keys=[self.key("sem", path)], args=[job_id, limit, repr(now), repr(now + ttl)]))

    # -- queues
    def known_queues(self) -> list[str]:
        """Queues with ids waiting or delayed (a queue is forgotten by the dequeue that empties it)."""
        return sorted(_s(q) for q in self.redis.smembers(self.key("queues")))

    def sizes(self, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(queued, delayed) counts of each queue, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            pipe.llen(self.queue_key(q))
            pipe.zcard(self.delayed_key(q))
        values = pipe.execute()
        return {q: (values[2 * i], values[2 * i + 1]) for i, q in enumerate(queues)}

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
