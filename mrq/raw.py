"""Raw queues: jobs that live in Redis as bare payloads and reach MongoDB only when something needs looking at.

A raw queue's name says its kind (by the suffix of its root, before any ``/``)::

    crawl_raw          a list: first in, first out; duplicates allowed
    crawl_set          a set: each payload once
    crawl_sorted_set   a sorted set: lowest score first   queue_raw_jobs("crawl_sorted_set", {"url": 5})
    crawl_timed_set    a timed set: score = unix time when due (default: now)

``queue_raw_jobs(queue, payloads)`` pushes strings, one Redis MULTI per call. A worker pops them in the same
atomic step as regular jobs (priority order across both), records each in flight with its payload under a fresh
job id, and turns it into a job with the queue's ``job_factory``, configured in ``mrq-config.py``::

    RAW_QUEUES = {
        "crawl_set": {
            "job_factory": lambda payload: {"path": "tasks.Crawl", "params": {"url": payload}},
            "retry_queue": "crawl_retries",                  # where retried and interrupted jobs go (regular)
            "statuses_no_storage": ("started", "success"),   # these are never written to MongoDB
            "pushback_seconds": 0,                           # timed sets only: see below
        },
    }

A raw job's document is created only when it reaches a status not in ``statuses_no_storage``: with
``("started", "success")`` a job that succeeds costs no MongoDB operation at all, and a failure is stored with
its params and traceback. Once stored, a raw job is a regular job (a retry or an interrupt requeues it on
``retry_queue``). A raw job in flight on a worker that dies is pushed back into its raw queue (or requeued on
``retry_queue`` if its document exists) by :func:`mrq.recovery.requeue_inflight`, which the cleaning plugin
calls.

``pushback_seconds`` (timed sets): a due member is re-scored to now + pushback instead of being removed, so it
runs again unless the task removes it (``remove_raw_jobs``): at-least-once without the in-flight record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mrq.broker import queue_kind
from mrq.config import RAW_QUEUE_KEYS, RawQueueSettings, check_raw_queues  # RAW_QUEUES is validated with the config
from mrq.exceptions import InvalidParams

__all__ = ["queue_raw_jobs", "remove_raw_jobs", "raw_settings", "RawQueueSettings", "is_raw_queue",
           "check_raw_queues", "RAW_QUEUE_KEYS"]


def is_raw_queue(queue: str) -> bool:
    """Whether ``queue`` is a raw queue (its root ends in ``_raw``, ``_set``, ``_sorted_set`` or ``_timed_set``)."""
    return queue_kind(queue) != "r"


def raw_settings(queue: str, config: Mapping[str, Any] | None = None) -> RawQueueSettings | None:
    """The settings of raw queue ``queue`` (its root's ``RAW_QUEUES`` entry), or ``None`` if it has none."""
    if config is None:
        from mrq.runtime import get_current_config
        config = get_current_config()
    return (config.get("raw_queues") or {}).get(queue.split("/", 1)[0])


def _payloads(queue: str, params: Any) -> tuple[list[str], dict[str, float] | None]:
    from mrq.broker import check_queue_name

    kind = queue_kind(check_queue_name(queue))
    if kind == "r":
        raise InvalidParams(f"Queue {queue!r} is not a raw queue: a raw queue's name ends in _raw, _set, _sorted_set "
                            "or _timed_set. Use queue_job(s) for regular queues.")
    if isinstance(params, Mapping):
        if kind not in ("z", "t"):
            raise InvalidParams(f"Raw queue {queue!r} takes a list of payloads; a dict of payload -> score is for "
                                "*_sorted_set and *_timed_set queues.")
        items = list(params.items())
    elif kind == "z":
        raise InvalidParams(f"Raw queue {queue!r} is a sorted set: give a dict of payload -> score.")
    elif isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise InvalidParams(f"queue_raw_jobs({queue!r}, ...) takes a list of payloads, not {type(params).__name__}.")
    else:
        items = [(p, None) for p in params]
    payloads: list[str] = []
    scores: dict[str, float] = {}
    for payload, score in items:
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", "surrogateescape")  # invalid UTF-8 is refused below
        elif isinstance(payload, (int, float)) and not isinstance(payload, bool):
            payload = str(payload)
        if not isinstance(payload, str):
            raise InvalidParams(f"Raw payloads are strings (or numbers); got {type(payload).__name__} {payload!r:.80} "
                                f"for queue {queue!r}: serialise it yourself (json.dumps) and parse it in job_factory.")
        try:
            payload.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParams(f"Raw payload {payload!r:.80} for queue {queue!r} is not valid UTF-8 text: encode "
                                "binary data yourself (base64) and decode it in job_factory.") from None
        payloads.append(payload)
        if score is not None:
            try:
                scores[payload] = float(score)
            except (TypeError, ValueError):
                raise InvalidParams(f"Score {score!r} of payload {payload!r:.80} is not a number.") from None
            if math.isnan(scores[payload]):
                raise InvalidParams(f"Score {score!r} of payload {payload!r:.80} is NaN: give a number.")
    return payloads, (scores or None)


def queue_raw_jobs(queue: str, params: Sequence[Any] | Mapping[Any, float], batch_size: int = 10_000) -> int:
    """Push raw jobs: a list of payloads, or ``{payload: score}`` for sorted and timed sets (a timed set's score is
    the unix time when the job is due; a list gives now). One Redis MULTI per ``batch_size`` payloads.

    :return: how many payloads were given. Nothing is written to MongoDB.
    :raises InvalidParams: for a regular queue or a payload that is not a string or a number.
    """
    from mrq.runtime import get_broker

    payloads, scores = _payloads(queue, params)
    broker = get_broker()
    for start in range(0, len(payloads), batch_size):
        chunk = payloads[start:start + batch_size]
        broker.push_raw(queue, chunk, {p: scores[p] for p in chunk} if scores else None)
    return len(payloads)


def remove_raw_jobs(queue: str, payloads: Iterable[Any]) -> int:
    """Remove payloads from a raw queue (a list scans it: O(its length)); returns how many were removed."""
    from mrq.runtime import get_broker

    items, _ = _payloads(queue, list(payloads))
    if not items:
        return 0
    broker = get_broker()
    key, kind = broker.queue_key(queue), queue_kind(queue)
    pipe = broker.redis.pipeline(transaction=True)
    for payload in items:
        if kind == "l":
            pipe.lrem(key, 1, payload)
        elif kind == "s":
            pipe.srem(key, payload)
        else:
            pipe.zrem(key, payload)
    return int(sum(pipe.execute()))
