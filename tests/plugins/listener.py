"""Implements the recorder's own hook ``mrq_recorder_event`` (declared by ``tests.plugins.recorder``)."""

from __future__ import annotations

from typing import Any

from mrq.hookspecs import hookimpl


@hookimpl
def mrq_recorder_event(name: str, data: dict[str, Any]) -> Any:
    return {"heard": name, **data}
