"""``async def`` tasks the test suite runs in real worker processes (tests/test_aio.py)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from gevent import monkey

from mrq.context import get_current_job, log, retry_current_job, set_current_job_progress
from mrq.task import Task


async def sleep(t: float = 1.0, result: Any = "slept") -> Any:
    await asyncio.sleep(t)
    return result


class Add(Task):
    async def run(self, params: dict[str, Any]) -> Any:
        await asyncio.sleep(0)
        log.info("adding %s and %s", params["a"], params["b"])  # stored with the job
        set_current_job_progress(0.5)
        return params["a"] + params["b"]


async def context() -> dict[str, Any]:
    """The current job seen in the coroutine, in a task it creates, and after an await."""
    job = get_current_job()

    async def child() -> Any:
        await asyncio.sleep(0.01)
        return str(get_current_job().id)  # type: ignore[union-attr]

    children = await asyncio.gather(child(), child())
    await asyncio.sleep(0.01)
    after = get_current_job()
    return {"job": str(job.id) if job else None, "children": children,
            "after": str(after.id) if after else None}


async def retry(delay: float = 0.1) -> None:
    await asyncio.sleep(0)
    retry_current_job(delay=delay, max_retries=1)


class _Client:
    """Stands for an asyncio client or pool (httpx, asyncpg...): bound to the loop that created it."""

    created = 0

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()  # used across jobs: fails on any other loop
        self.calls = 0
        _Client.created += 1

    async def call(self) -> int:
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("attached to a different loop")
        async with self.lock:
            await asyncio.sleep(0)
            self.calls += 1
            return self.calls


_client: _Client | None = None


async def use_client() -> dict[str, Any]:
    global _client
    if _client is None:
        _client = _Client()
    calls = await _client.call()
    return {"created": _Client.created, "calls": calls, "client": id(_client), "pid": os.getpid(),
            "fds": len(os.listdir("/proc/self/fd"))}


async def cancellable(t: float = 30.0, marker: str = "") -> str:
    """Sleeps; writes "cancelled" to ``marker`` if asyncio.CancelledError reaches it."""
    try:
        await asyncio.sleep(t)
    except asyncio.CancelledError:
        if marker:
            with open(marker, "w") as f:
                f.write("cancelled")
        raise
    return "slept"


async def block(t: float = 0.4) -> str:
    """Blocks the whole process (a call gevent does not patch) from inside a coroutine."""
    await asyncio.sleep(0)
    monkey.get_original("time", "sleep")(t)  # THE BLOCKING LINE
    return "blocked"


async def plain_asyncio_run() -> int:
    return 1


def sync_asyncio_run() -> int:
    """A plain task that runs its own loop with asyncio.run, in a worker whose loop runs coroutine tasks."""
    return asyncio.run(plain_asyncio_run())


class TimesOut(Task):
    timeout = 1

    async def run(self, params: dict[str, Any]) -> Any:
        return await cancellable(**params)


async def noop(**params: Any) -> None:
    return None
