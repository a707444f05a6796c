"""The tracemalloc site tracker, in this process."""

from __future__ import annotations

import tracemalloc

import pytest

from mrq_memtrace.sites import SiteTracker

KEPT: list[bytes] = []


def leak_some() -> None:
    KEPT.append(bytes(10_000))  # LEAK SITE


def churn() -> None:
    temporary = [bytes(10_000) for _ in range(10)]
    del temporary


@pytest.fixture
def tracker():
    was_tracing = tracemalloc.is_tracing()
    SiteTracker.start()
    yield SiteTracker(limit=5, min_intervals=3)
    KEPT.clear()
    if not was_tracing:
        tracemalloc.stop()


def test_a_site_that_keeps_growing_is_reported_and_churn_is_not(tracker):
    assert tracker.update() == []  # the baseline
    for interval in range(4):
        leak_some()
        churn()
        sites = tracker.update()
        if interval < 2:
            assert not any("LEAK SITE" in s["code"] for s in sites)  # grew only `interval + 1` times yet
    site = sites[0]
    assert site["code"].endswith("# LEAK SITE") and site["site"].startswith(__file__ + ":")
    assert site["growth"] >= 40_000 and site["count_growth"] >= 4 and site["intervals"] == 4
    assert not any("temporary" in s["code"] for s in sites)
    assert tracker.snapshots == 5 and tracker.last_ms > 0


def test_a_site_that_shrinks_starts_over(tracker):
    tracker.update()
    for _ in range(3):
        leak_some()
        tracker.update()
    KEPT.clear()
    assert not any("LEAK SITE" in s["code"] for s in tracker.update())
