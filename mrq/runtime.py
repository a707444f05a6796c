"""The process's MRQ runtime state: its configuration, connections, broker, plugin manager, worker, and the job of
each greenlet.

This is the kernel's own access to that state (the modules below :mod:`mrq.job` in the layers of
docs/architecture.md import it). User code and plugins import the same names from :mod:`mrq.context`, the one
documented entry point, which re-exports them.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from mrq.connections import Connections
from mrq.greenlets import get_current_job, greenlets_of, set_current_job

if TYPE_CHECKING:
    from mrq.broker import Broker
    from mrq.config import Config
    from mrq.plugins import PluginManager
    from mrq.worker import Worker

__all__ = [
    "connections", "get_current_job", "set_current_job", "greenlets_of", "get_current_worker", "set_current_worker",
    "get_current_config", "set_current_config", "setup_context", "get_broker", "get_plugin_manager",
]

_state: dict[str, Any] = {"config": None, "worker": None, "broker": None}


def set_current_config(config: Config) -> None:
    """Make ``config`` the process's configuration (connections are re-created from it)."""
    _state["config"] = config
    _state["broker"] = None
    connections.configure(config)


def get_current_config() -> Config:
    """The process's configuration; set up from the environment on first use if nothing set it."""
    if _state["config"] is None:
        warnings.warn("MRQ context not set up: using the environment and ./mrq-config.py "
                      "(call mrq.context.setup_context() first to silence this)", stacklevel=2)
        setup_context()
    return _state["config"]


def setup_context(**kwargs: Any) -> Config:
    """Configure MRQ in a script or web app: ``setup_context(redis=..., mongodb_jobs=...)``.

    Keyword arguments override every other source (command line excluded:
    ``argv`` is not read).
    """
    from mrq.config import get_config

    config = get_config("common", argv=None, extra=kwargs)
    set_current_config(config)
    return config


def get_plugin_manager() -> PluginManager:
    """The plugin manager of the current configuration."""
    return get_current_config().plugin_manager  # type: ignore[attr-defined, no-any-return]


def get_broker() -> Broker:
    """The Redis side of MRQ for the current configuration."""
    if _state["broker"] is None:
        from mrq.broker import Broker
        _state["broker"] = Broker(connections.redis, get_current_config()["redis_prefix"])
    return _state["broker"]  # type: ignore[no-any-return]


def set_current_worker(worker: Worker | None) -> None:
    _state["worker"] = worker


def get_current_worker() -> Worker | None:
    """The worker running in this process, if any."""
    return _state["worker"]


#: The connections of the current configuration (set up from the environment on first use, as the configuration).
connections = Connections(get_current_config)
