"""SharedCache: each value computed at most once per ttl, stale values served while one refresh runs."""

from __future__ import annotations

import threading
import time

from mrq.testing import wait_until

from mrq_dashboard.cache import SharedCache


class Counter:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls, self.delay, self.fail = 0, delay, fail

    def __call__(self) -> int:
        self.calls += 1
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("server away")
        return self.calls


def test_computed_once_per_ttl_and_shared():
    cache, compute = SharedCache(ttl=60), Counter()
    first = cache.get("k", compute)
    assert first.value == 1 and [cache.get("k", compute).value for _ in range(50)] == [1] * 50
    assert compute.calls == 1 and first.meta()["age"] >= 0


def test_concurrent_first_requests_wait_for_one_computation():
    cache, compute = SharedCache(ttl=60), Counter(delay=0.2)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", compute).value)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1] * 8 and compute.calls == 1


def test_stale_value_is_served_while_one_refresh_runs():
    cache, compute = SharedCache(ttl=0.05), Counter(delay=0.3)
    assert cache.get("k", compute).value == 1
    time.sleep(0.1)
    started = time.perf_counter()
    values = [cache.get("k", compute).value for _ in range(20)]      # all answered at once, with the old value
    assert values == [1] * 20 and time.perf_counter() - started < 0.25
    wait_until(lambda: cache.get("k", compute).value == 2, timeout=5, what="refreshed")
    assert compute.calls == 2                                        # one refresh for the 20 stale reads


def test_a_failed_refresh_keeps_the_last_value():
    cache = SharedCache(ttl=0.05)
    cache.get("k", Counter())
    time.sleep(0.1)
    failing = Counter(fail=True)
    assert cache.get("k", failing).value == 1
    wait_until(lambda: failing.calls == 1, timeout=5, what="refresh tried")
    time.sleep(0.02)
    assert cache.get("k", failing).value == 1


def test_ttl_zero_computes_every_time():
    cache, compute = SharedCache(ttl=0), Counter()
    assert [cache.get("k", compute).value for _ in range(3)] == [1, 2, 3]
