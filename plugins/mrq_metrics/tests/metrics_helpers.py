"""Helpers of mrq-metrics' tests: scraping an endpoint, free ports, the tasks' folder on the workers' path.

Not a ``conftest.py``: the dashboard's tests import theirs by that name.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
T = "metrics_tasks."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str, auth: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a /metrics answer: ``{(sample name, sorted labels): value}``; raises if it does not answer."""
    request = urllib.request.Request(url)
    if auth:
        import base64
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return parse(text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def try_scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        return scrape(url)
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def by_status(samples: dict[Any, float], name: str = "mrq_jobs_ended_total") -> dict[str, float]:
    """``mrq_jobs_ended_total`` summed by status (zeros left out)."""
    out: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name and value:
            status = dict(labels)["status"]
            out[status] = out.get(status, 0) + value
    return out


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x
                                                                       for k, x in labels.items()))
