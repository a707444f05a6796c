"""Per-greenlet profiling: the profiler runs only while its greenlet runs."""

from __future__ import annotations

import cProfile
import pstats

import gevent

from mrq_greentrace.profiling import top_functions, write_stats
from mrq_greentrace.tracer import GreenletTracer


def mine() -> None:
    gevent.sleep(0.05)
    sum(range(200_000))


def theirs() -> None:
    for _ in range(5):
        sum(range(100_000))
        gevent.sleep(0.01)


def test_only_the_profiled_greenlet_is_in_the_profile(tmp_path):
    tracer = GreenletTracer(0)
    tracer.install()
    profiler = cProfile.Profile()

    def profiled():
        tracer.profile(gevent.getcurrent(), profiler)
        profiler.enable()
        try:
            mine()
        finally:
            profiler.disable()
            tracer.unprofile(gevent.getcurrent())

    try:
        gevent.joinall([gevent.spawn(profiled), gevent.spawn(theirs)])
    finally:
        tracer.uninstall()
    top = top_functions(profiler, 10)
    names = [row["function"] for row in top]
    assert names[0].endswith("(mine)"), names  # its cumulative time spans the switch (not cut at it)
    assert top[0]["cumtime"] >= 0.05
    assert not any(n.endswith("(theirs)") for n in names)
    assert not any("_lsprof" in n for n in names)
    path = write_stats(profiler, str(tmp_path / "out"), "tasks.mine-1/2")
    assert path.endswith("tasks.mine-1_2.pstats")
    assert any(name == "mine" for (_f, _l, name) in pstats.Stats(path).stats)  # type: ignore[attr-defined]
