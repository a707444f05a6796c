"""A plugin implementing a hook nobody declares: enabling it is a PluginError."""

from __future__ import annotations

from mrq.hookspecs import hookimpl


@hookimpl
def mrq_no_such_hook() -> None:
    pass
