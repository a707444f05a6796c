"""The host's shared directory: emptied by the first process only, dead processes' gauges dropped and their counts
merged into an archive without changing the sums, a reused pid's counts kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from metrics_helpers import by_status, parse, total
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.values import MultiProcessValue

from mrq_metrics.figures import Figures
from mrq_metrics.server import HostCollector, SharedDir

DEAD = 4_000_001  # pids no process has here (checked)


def as_process(directory: str, pid: int, successes: int, in_progress: int = 1) -> Figures:
    """Figures written to ``directory`` as process ``pid`` would write them."""
    figures = Figures(directory)
    figures._value_class = MultiProcessValue(lambda: pid)
    figures.ended[("default", "tasks.A")] = {"success": successes}
    figures.run[("default", "tasks.A")] = [0, 0, 0, successes] + [0] * 18 + [0.01 * successes]
    figures.flush({("default", "tasks.A"): in_progress} if in_progress else {})
    return figures


def scrape(shared: SharedDir) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(shared))
    return parse(generate_latest(registry).decode())


def test_the_first_process_empties_the_directory_the_next_ones_do_not(tmp_path):
    path = tmp_path / "shared"
    path.mkdir()
    (path / "counter_123.db").write_bytes(b"stale")
    first = SharedDir(str(path))
    assert first.join() is True and not (path / "counter_123.db").exists()
    (path / "counter_456.db").write_bytes(b"")
    # Another process joins while this one holds the directory: nothing is emptied.
    code = ("import sys; from mrq_metrics.server import SharedDir; "
            f"sys.exit(0 if SharedDir({str(path)!r}).join() is False else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert (path / "counter_456.db").exists()
    first.leave()
    assert subprocess.run([sys.executable, "-c", code.replace("is False", "is True")]).returncode == 0


def test_dead_processes_gauges_go_their_counts_stay_and_are_merged(tmp_path):
    assert not any(os.path.exists(f"/proc/{pid}") for pid in range(DEAD, DEAD + 3))
    shared = SharedDir(str(tmp_path / "shared"))
    shared.join()
    mine = as_process(shared.path, os.getpid(), 5)
    for i in range(3):
        as_process(shared.path, DEAD + i, 10 * (i + 1))
    samples = scrape(shared)
    assert by_status(samples) == {"success": 5 + 10 + 20 + 30}
    assert total(samples, "mrq_job_run_seconds_count") == 65
    assert total(samples, "mrq_jobs_in_progress") == 1          # only this live process's gauge
    names = sorted(p.name for p in Path(shared.path).glob("*.db"))
    assert names == [f"counter_{os.getpid()}.db", "counter_archive.db", f"gauge_livesum_{os.getpid()}.db",
                     f"histogram_{os.getpid()}.db", "histogram_archive.db"]
    # More dead processes later: merged into the same archive, the sums unchanged.
    as_process(shared.path, DEAD + 5, 100, in_progress=0)
    mine.ended[("default", "tasks.A")]["success"] = 6
    mine.flush({})
    samples = scrape(shared)
    assert by_status(samples) == {"success": 6 + 60 + 100}
    assert abs(total(samples, "mrq_job_run_seconds_sum") - (0.05 + 0.6 + 1.0)) < 1e-9
    assert len(list(Path(shared.path).glob("*.db"))) == 5


def test_a_reused_pid_keeps_the_counts_of_the_dead_process(tmp_path):
    shared = SharedDir(str(tmp_path / "shared"))
    shared.join()
    as_process(shared.path, DEAD, 7)               # died; its files not merged yet (no scrape since)
    as_process(shared.path, DEAD, 2)               # a new process got the same pid: its counts add up
    assert by_status(scrape(shared)) == {"success": 9}
