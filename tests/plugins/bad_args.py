"""A plugin implementing a known hook with an argument the hook does not have: a PluginError."""

from __future__ import annotations

from typing import Any

from mrq.hookspecs import hookimpl


@hookimpl
def mrq_job_finished(job: Any, colour: str) -> None:
    pass
