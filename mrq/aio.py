"""``async def`` tasks on the gevent worker: one asyncio event loop per process, run by gevent's hub.

A task function declared ``async def`` (or a :class:`~mrq.task.Task` whose ``run`` is) returns a coroutine; the
kernel hands it to :func:`run_awaitable`, which runs it on the process's loop and parks the job's greenlet until
it ends. The design (see docs/architecture.md, "async def tasks"):

* **One loop per process, living as long as it.** An :class:`asyncio.SelectorEventLoop` whose selector is
  gevent's (:class:`gevent.selectors.GeventSelector`) runs ``run_forever`` in a greenlet of its own, started at
  the first coroutine. Waiting for I/O or a timer, the loop greenlet waits in gevent's hub like any other
  greenlet, so job greenlets, the worker's own and the loop share the hub; every coroutine of every job runs on
  this one loop: a client or pool created once (lazily, inside a coroutine) serves every later job, and nothing
  is ever "attached to a different loop".
* **A job greenlet waits on its coroutine's task** (a :class:`gevent.event.Event` set by the task's done
  callback), so ``--greenlets`` still bounds the jobs in flight, coroutine or not. A timeout or a cancel
  (raised in the job's greenlet as for any job) cancels the task: ``asyncio.CancelledError`` is raised inside
  the coroutine, which gets :data:`CANCEL_GRACE` seconds to run its ``finally`` blocks, and the job ends
  ``timeout``/``cancel``.
* **The current job inside coroutines.** Each step of a task runs bound to its job (the loop greenlet is bound
  with :func:`mrq.context.set_current_job` during the step, unbound after), so ``get_current_job``, ``log``,
  ``set_current_job_progress``, ``retry_current_job`` and mrq-greentrace's per-job figures work in coroutines
  and in the tasks they create (``asyncio.gather``, ``create_task``: a task created during a step belongs to
  that step's job).
* **asyncio's "running loop" is per OS thread**, not per greenlet: the loop sets it only while its greenlet
  runs (it restores what was there while it waits in the hub), so a plain task of the same process that calls
  ``asyncio.run()`` is not told "cannot be called from a running event loop".

A blocking call inside a coroutine blocks the loop greenlet, hence the hub: mrq-greentrace reports it, charged
to the job whose step blocked, like a blocking call in any task.
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import os
import time
from collections.abc import Awaitable, Generator
from typing import Any

import gevent
import gevent.event
import gevent.selectors

__all__ = ["run_awaitable", "get_loop", "loop_greenlet", "CANCEL_GRACE", "SLOW_STEP"]

#: Seconds a cancelled coroutine (its job timed out or was cancelled) gets to finish its ``finally`` blocks
#: before its job ends anyway.
CANCEL_GRACE = 5.0

#: A step of a coroutine that ran at least this long (seconds) without awaiting yields to gevent's hub at once.
SLOW_STEP = 0.005

_state: dict[str, Any] = {"loop": None, "greenlet": None, "pid": None}


class _HubSelector(gevent.selectors.GeventSelector):
    """gevent's selector that hands asyncio's per-thread "running loop" back while the loop waits in the hub."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._outer: asyncio.AbstractEventLoop | None = None

    def select(self, timeout: float | None = None) -> Any:
        asyncio._set_running_loop(self._outer)
        try:
            return super().select(timeout)
        finally:
            self._outer = asyncio._get_running_loop()
            asyncio._set_running_loop(self.loop)


class _Bound(collections.abc.Coroutine):  # type: ignore[type-arg]
    """A coroutine whose every step runs with the loop greenlet bound to ``job`` (for ``mrq.context``)."""

    __slots__ = ("coro", "job")

    def __init__(self, coro: Any, job: Any) -> None:
        self.coro, self.job = coro, job

    def send(self, value: Any) -> Any:
        return self._step(self.coro.send, value)

    def throw(self, *args: Any) -> Any:
        return self._step(self.coro.throw, *args)

    def _step(self, method: Any, *args: Any) -> Any:
        from mrq.greenlets import set_current_job

        glet = gevent.getcurrent()
        set_current_job(self.job, glet)
        start = time.perf_counter()
        try:
            return method(*args)
        finally:
            if time.perf_counter() - start >= SLOW_STEP:
                # Hand the hub back while still bound to this job: a greenlet tracer (mrq-greentrace) charges
                # the long run of the loop greenlet to the job whose step it was, not to the next step's job.
                gevent.sleep(0)
            set_current_job(None, glet)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]

    def __next__(self) -> Any:
        return self.send(None)

    def __iter__(self) -> Any:
        return self

    def __repr__(self) -> str:
        return f"<mrq job {getattr(self.job, 'id', None)} {self.coro!r}>"


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """Tasks created while a job's step runs (or from a job's greenlet) belong to that job."""
    from mrq.greenlets import get_current_job

    job = get_current_job()
    if job is not None and not isinstance(coro, _Bound):
        coro = _Bound(coro, job)
    return asyncio.Task(coro, loop=loop, **kwargs)


def get_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop, started (in a greenlet of its own) on first use."""
    loop = _state["loop"]
    if loop is None or _state["pid"] != os.getpid() or _state["greenlet"].dead:
        selector = _HubSelector()
        loop = asyncio.SelectorEventLoop(selector)
        selector.loop = loop
        loop.set_task_factory(_task_factory)  # type: ignore[arg-type]
        _state.update(loop=loop, pid=os.getpid(), greenlet=gevent.spawn(_run_forever, loop))
    return loop  # type: ignore[no-any-return]


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        asyncio._set_running_loop(None)


def loop_greenlet() -> Any:
    """The greenlet that runs the process's loop (``None`` before the first coroutine)."""
    return _state["greenlet"]


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def run_awaitable(awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` (a task's coroutine) on the process's loop and return its result, from a greenlet.

    The calling greenlet waits; an exception raised into it while it waits (timeout, cancel, stop) cancels the
    coroutine, waits at most :data:`CANCEL_GRACE` seconds for it to end, and propagates.
    """
    loop = get_loop()
    if gevent.getcurrent() is _state["greenlet"]:
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise RuntimeError("A coroutine task was run synchronously from inside a coroutine (mrq.context.run_task "
                           "in an async def task?): await it instead.")
    coro = awaitable if inspect.iscoroutine(awaitable) else _await(awaitable)
    task = loop.create_task(coro)
    done = gevent.event.Event()
    task.add_done_callback(lambda _task: done.set())
    loop.call_soon_threadsafe(_noop)  # wakes the loop if it waits in the hub
    try:
        done.wait()
    except BaseException:
        task.cancel()
        loop.call_soon_threadsafe(_noop)
        _wait_cancelled(task, done)
        raise
    return task.result()


def _noop() -> None:
    pass


def _wait_cancelled(task: asyncio.Task[Any], done: gevent.event.Event) -> None:
    deadline = time.monotonic() + CANCEL_GRACE
    while not done.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            done.wait(left)
        except BaseException:  # noqa: BLE001, S112 - a repeated timeout or cancel: the task is already cancelled
            continue
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at exit
