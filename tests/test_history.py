"""mrq.history: the per-minute history a worker writes with its report, and merging several workers'."""

from __future__ import annotations

from collections import Counter

import bson

from mrq.history import MINUTES, History, merge

T = "tests.tasks.general."
T0 = 1_767_225_600  # a minute boundary


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_done_counts_are_differences_of_the_cumulative_counters():
    clock = Clock()
    history = History(clock=clock)
    counters: Counter[str] = Counter()
    history.sample(counters, 50, 1.0)
    counters.update(success=10, failed=1, done=11)   # 'done' is not a status: ignored
    clock.now += 20
    history.sample(counters, 51, 3.0)
    counters.update(success=5)
    clock.now += 60                                  # next minute
    doc = history.sample(counters, 60, 9.0)
    assert doc["start"] == T0
    assert doc["done"] == {"success": [10, 5], "failed": [1, 0]}
    assert doc["rss"] == [51, 60]
    assert doc["cpu"] == [10.0, 10.0]                # 2 s of CPU in 20 s, then 6 s in 60 s
    assert doc["queues"] == {}


def test_minutes_without_a_report_are_empty_and_the_size_is_bounded():
    clock = Clock()
    history = History(clock=clock)
    counters: Counter[str] = Counter()
    for minute in range(3 * MINUTES):
        counters["success"] += 1
        clock.now = T0 + 60 * minute + (180 if minute > 10 else 0)   # a 3-minute hole after minute 10
        doc = history.sample(counters, 100, float(minute))
    assert len(doc["rss"]) == MINUTES
    assert doc["start"] == clock.now // 60 * 60 - 60 * (MINUTES - 1)
    first = History(clock=Clock())
    first.sample(Counter(success=1), 1, 0.0)
    first._clock.now += 4 * 60  # type: ignore[attr-defined]
    doc = first.sample(Counter(success=3), 2, 0.0)
    assert doc["done"] == {"success": [1, 0, 0, 0, 2]} and doc["rss"] == [1, None, None, None, 2]
    first._clock.now += 1000 * 60  # type: ignore[attr-defined]
    assert first.sample(Counter(success=3), 2, 0.0)["rss"] == [2]        # a long hole starts over


def test_queue_sizes_one_call_per_sample_and_at_most_max_queues():
    calls = []

    def sizes(queues):
        calls.append(list(queues))
        return {q: (i, 0) for i, q in enumerate(queues)}

    clock = Clock()
    history = History(clock=clock, max_queues=3)
    history.sample(Counter(), 1, 0.0, ["a", "b", "c", "d"], sizes)
    clock.now += 60
    doc = history.sample(Counter(success=1000), 1, 0.0, ["a", "b", "c", "d"], sizes)
    assert calls == [["a", "b", "c"]] * 2
    assert doc["queues"] == {"a": [0, 0], "b": [1, 1], "c": [2, 2]}

    def down(queues):
        raise ConnectionError("Redis away")

    clock.now += 60
    assert history.sample(Counter(), 1, 0.0, ["a"], down)["queues"]["a"] == [0, 0, None]


def test_document_size_stays_small():
    """The bound that docs/performance.md quotes: 2 hours, 5 statuses, 20 queues."""
    clock = Clock()
    history = History(clock=clock)
    counters: Counter[str] = Counter()
    queues = [f"queue{i}" for i in range(20)]
    for minute in range(MINUTES + 10):
        clock.now = T0 + 60 * minute
        for status in ("success", "failed", "retry", "cancel", "timeout"):
            counters[status] += 1234
        doc = history.sample(counters, 2048, minute * 30.0, queues, lambda qs: {q: (99_999, 0) for q in qs})
    size = len(bson.encode({"history": doc}))
    assert size < 64_000, size


def test_merge_sums_done_and_takes_the_largest_queue_sample():
    a = {"v": 1, "start": T0, "done": {"success": [1, 2, 3]}, "rss": [], "cpu": [],
         "queues": {"q": [5, None, 7]}}
    b = {"v": 1, "start": T0 + 60, "done": {"success": [10, 20], "failed": [0, 1]}, "rss": [], "cpu": [],
         "queues": {"q": [6, 6]}}
    merged = merge([a, b, None, {"v": 99}], minutes=4, now=T0 + 3 * 60 + 5)
    assert merged["start"] == T0
    assert merged["done"] == {"success": [1, 12, 23, 0], "failed": [0, 0, 1, 0]}
    assert merged["total"] == [1, 12, 24, 0]
    assert merged["queues"] == {"q": [5, 6, 7, None]}
    assert merge([a], minutes=2, now=T0 + 60)["done"] == {"success": [1, 2]}   # older minutes dropped


def test_a_worker_writes_its_history(mrq_worker):
    from mrq.job import queue_jobs

    mrq_worker.start("--greenlets", "4", queues=("default", "other"))
    queue_jobs(T + "Add", [{"a": i, "b": 1} for i in range(30)])
    queue_jobs(T + "Fail", [{}] * 3)
    mrq_worker.wait_for_idle()
    mrq_worker.stop()
    history = mrq_worker.report()["history"]
    assert sum(history["done"]["success"]) == 30 and sum(history["done"]["failed"]) == 3
    assert set(history["queues"]) == {"default", "other"}
    assert history["rss"][-1] > 0
