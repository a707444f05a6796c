"""The greenlet tracer in this (not monkey-patched) process: time.sleep blocks here, as a C call would."""

from __future__ import annotations

import time

import gevent
import greenlet
import pytest

from mrq_greentrace.tracer import Block, GreenletTracer


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.fixture
def jobs():
    """greenlet -> job, as mrq.context binds them, and a tracer reading it."""
    bound: dict = {}
    blocks: list[Block] = []
    tracer = GreenletTracer(0.1, on_block=blocks.append, job_of=bound.get)
    tracer.install()
    try:
        yield bound, tracer, blocks
    finally:
        tracer.uninstall()


def run_as(bound: dict, tracer: GreenletTracer, job: str, func, *args):
    def body():
        bound[gevent.getcurrent()] = job
        tracer.track(job)
        try:
            func(*args)
        finally:
            stats = tracer.untrack(job)
            del bound[gevent.getcurrent()]
        return stats
    return gevent.spawn(body)


def test_each_job_gets_its_own_cpu_time_and_switches(jobs):
    bound, tracer, _ = jobs
    burner = run_as(bound, tracer, "burner", lambda: (burn(0.2), gevent.sleep(0.01), burn(0.1)))
    sleeper = run_as(bound, tracer, "sleeper", gevent.sleep, 0.5)
    gevent.joinall([burner, sleeper])
    assert burner.value.cpu >= 0.28 and burner.value.switches >= 1
    assert sleeper.value.cpu < 0.05 and sleeper.value.switches >= 1


def test_greenlets_spawned_by_a_job_count_for_it(jobs):
    bound, tracer, _ = jobs

    def fan_out():
        gevent.joinall([gevent.spawn(burn, 0.05) for _ in range(4)])

    job = run_as(bound, tracer, "parent", fan_out)
    job.join()
    assert job.value.cpu >= 0.18


def test_a_block_is_sampled_at_the_blocking_line(jobs):
    bound, tracer, blocks = jobs
    job = run_as(bound, tracer, "blocker", lambda: (time.sleep(0.3), gevent.sleep(0)))  # BLOCKS HERE
    job.join()
    gevent.sleep(0)  # blocks are reported from the hub, after the switch
    assert len(blocks) == 1
    block = blocks[0]
    assert block.job == "blocker" and block.seconds >= 0.25 and block.sampled
    assert block.where.startswith(f"{__file__}:") and "in <lambda>" in block.where
    assert "BLOCKS HERE" in block.stack[-1]
    assert job.value.blocks == 1 and job.value.worst is block


def test_short_runs_and_the_hub_are_not_blocks(jobs):
    bound, tracer, blocks = jobs
    job = run_as(bound, tracer, "quick", lambda: [gevent.sleep(0.01) for _ in range(5)])
    job.join()
    gevent.sleep(0.3)  # the hub waits in its loop: not a block
    assert blocks == [] and job.value.blocks == 0


def test_previous_trace_function_is_chained_and_restored():
    seen = []
    previous = greenlet.settrace(lambda event, args: seen.append(event))
    try:
        tracer = GreenletTracer(0)
        tracer.install()
        gevent.sleep(0)
        tracer.uninstall()
        assert "switch" in seen and tracer.switch_count >= 2
        count = tracer.switch_count
        gevent.sleep(0)
        assert tracer.switch_count == count
    finally:
        greenlet.settrace(previous)


def test_the_watcher_thread_runs_only_while_installed_and_only_with_a_threshold():
    import sys

    def threads() -> int:
        return len(sys._current_frames())  # threads of _thread too, which threading does not list

    time.sleep(0.2)  # watchers of the previous tests look one last time and end
    before = threads()
    tracer = GreenletTracer(0.02)
    tracer.install()
    tracer.uninstall()
    tracer.install()  # re-installed before the first watcher noticed: it ends at its next look
    time.sleep(0.05)
    assert threads() == before + 1
    tracer.uninstall()
    time.sleep(0.1)
    assert threads() == before
    off = GreenletTracer(0)
    off.install()
    assert threads() == before
    off.uninstall()
