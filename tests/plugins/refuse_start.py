"""A plugin whose ``mrq_worker_start`` raises: the worker must exit with code 1 before running any job."""

from __future__ import annotations

from typing import Any

from mrq.hookspecs import hookimpl


@hookimpl
def mrq_worker_start(worker: Any) -> None:
    raise RuntimeError("refuse_start plugin: not today")
