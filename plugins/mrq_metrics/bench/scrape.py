"""Time of a host scrape of about 2,000 series: ``python plugins/mrq_metrics/bench/scrape.py [processes] [keys]``.

Writes the figures of ``keys`` (queue, path) pairs (every final status, retries, both histograms, in progress) from
``processes`` simulated processes to a multiprocess directory, then times what the serving process does per scrape
(bury dead pids, merge the files, render the text format). Prints series, ms per scrape (best and median of 20).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.values import MultiProcessValue

from mrq_metrics import figures as figures_module
from mrq_metrics.figures import FINAL_STATUSES, Figures
from mrq_metrics.server import HostCollector, SharedDir


def fill(directory: str, pid: int, keys: int) -> None:
    figures = Figures(directory)
    figures._value_class = MultiProcessValue(lambda: pid)  # as if written by process `pid`
    for k in range(keys):
        key = (f"queue{k % 10}", f"tasks.Task{k}")
        figures.ended[key] = {status: k + 1 for status in sorted(FINAL_STATUSES)}
        figures.retries[key] = 1
        for table in (figures.run, figures.wait):
            h = table[key] = [0] * (len(figures_module.BUCKETS) + 1) + [0.0]
            h[3] += 5
            h[-1] += 0.05
    figures.flush({(f"queue{k % 10}", f"tasks.Task{k}"): 1 for k in range(keys)})


def main(processes: int = 2, keys: int = 36) -> dict[str, Any]:
    shared = SharedDir(tempfile.mkdtemp(prefix="mrq-metrics-scrape-"))
    shared.join()
    for pid in range(processes):
        fill(shared.path, 4_000_000 + pid, keys)  # pids that do not run: buried (their gauges dropped) on scrape 1
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(shared))
    text = generate_latest(registry)
    series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
    times = []
    for _ in range(20):
        start = time.perf_counter()
        generate_latest(registry)
        times.append((time.perf_counter() - start) * 1000)
    out = {"processes": processes, "series": series, "best_ms": min(times), "median_ms": statistics.median(times),
           "bytes": len(text)}
    return out


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    print(main(*args))
