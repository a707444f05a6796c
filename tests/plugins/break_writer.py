"""Test plugin: the worker's status writer loop dies at once (a bug in a kernel service)."""

from __future__ import annotations

from typing import Any

from mrq.hookspecs import hookimpl


@hookimpl
def mrq_worker_start(worker: Any) -> None:
    def broken() -> None:
        raise RuntimeError("the writer loop has a bug")

    worker.writer.run = broken
