"""A plugin whose ``mrq_configure`` refuses a configuration (``greenlets`` above 100)."""

from __future__ import annotations

from typing import Any

from mrq.exceptions import ConfigError
from mrq.hookspecs import hookimpl


@hookimpl
def mrq_configure(config: Any) -> None:
    if config.get("greenlets", 1) > 100:
        raise ConfigError("strict plugin: greenlets must be at most 100; lower --greenlets.")
    config["strict_checked"] = True
