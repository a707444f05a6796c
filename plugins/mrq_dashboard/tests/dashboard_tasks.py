"""Tasks run by the dashboard's tests (the test workers run from this folder)."""

from __future__ import annotations

import os
import time
from typing import Any

from mrq.context import log
from mrq.task import Task


class Add(Task):
    def run(self, params: dict[str, Any]) -> Any:
        log.info("adding %s and %s", params["a"], params["b"])
        return params["a"] + params["b"]


class NeedsFile(Task):
    """Fails with FileNotFoundError until the file of ``params["path"]`` exists (the cause, then fixed)."""

    max_retries = 0

    def run(self, params: dict[str, Any]) -> Any:
        with open(params["path"]) as handle:
            return handle.read()


class Chatty(Task):
    """Logs a line every ``every`` seconds, ``lines`` times."""

    def run(self, params: dict[str, Any]) -> Any:
        for i in range(int(params.get("lines", 100))):
            log.info("line %d of a chatty job", i)
            time.sleep(float(params.get("every", 0.2)))
        return "done"


class Evil(Task):
    """Logs and raises text made of markup (the XSS test)."""

    def run(self, params: dict[str, Any]) -> Any:
        log.info("log %s", params.get("html"))
        raise ValueError(params.get("html"))


def pid(**params: Any) -> int:
    return os.getpid()
