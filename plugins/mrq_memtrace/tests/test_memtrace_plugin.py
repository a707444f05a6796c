"""mrq-memtrace in real ``mrq-worker`` processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mrq.job import Job, queue_job
from mrq.testing import wait_until

HERE = Path(__file__).resolve().parent
TASKS = HERE / "memtrace_tasks.py"
ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def task(name: str) -> str:
    return f"memtrace_tasks.{name}"


def line_of(marker: str) -> int:
    return next(i for i, line in enumerate(TASKS.read_text().splitlines(), 1) if marker in line)


def doc(job_id):
    return Job(job_id).fetch().data


def run_jobs(worker, name: str, count: int, **params) -> list:
    ids = [queue_job(task(name), params) for _ in range(count)]
    worker.wait_for_idle()
    return [doc(i) for i in ids]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MRQ_")}
    full_env.update(ENV, **(env or {}))
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=60)


def test_a_leaking_task_is_reported_with_its_class_first_and_a_nonleaking_one_is_not(mrq_worker, capfd):
    # The original workflow: --trace_memory enables the plugin, --gevent 1 is --greenlets 1.
    mrq_worker.start("--trace_memory", "--gevent", "1", env=ENV)
    run_jobs(mrq_worker, "noleak", 2)  # warm up: imports, first-time caches
    quiet = run_jobs(mrq_worker, "noleak", 3)
    leaks = run_jobs(mrq_worker, "leak", 3)
    for data in leaks:
        assert data["status"] == "success"
        top = data["memory_growth"][0]
        assert (top["type"], top["delta"]) == (task("Leaky"), 1000), data["memory_growth"]
        # memory_diff is the process's RSS before/after: reported, but not asserted to grow. The allocator may
        # serve the leak from memory freed earlier (the noleak jobs freed as much), and RSS is the kernel's view,
        # which other processes' load can bend. The growth by type above is what the plugin measures per job.
        assert isinstance(data["memory_diff"], int)
    for data in quiet:
        assert data["status"] == "success" and "memory_diff" in data
        assert not any(g["type"] == task("Leaky") for g in data["memory_growth"]), data["memory_growth"]
        assert all(g["delta"] < 100 for g in data["memory_growth"]), data["memory_growth"]

    def totals():
        report = mrq_worker.report() or {}
        tasks = {t["path"]: t for t in report.get("memtrace", {}).get("tasks", [])}
        return tasks if tasks.get(task("leak"), {}).get("jobs") == 3 else None

    tasks = wait_until(totals, 15, "the per-task totals in the report")
    assert tasks[task("leak")]["types"][0] == {"type": task("Leaky"), "delta": 3000}
    assert tasks[task("leak")]["memory_diff"] == sum(data["memory_diff"] for data in leaks)
    assert tasks[task("noleak")]["jobs"] == 5
    assert mrq_worker.stop() == 0
    err = capfd.readouterr().err
    job = leaks[0]["_id"]
    assert f"memtrace: job {job} {task('leak')}: memory_diff +" in err
    assert f"{task('Leaky'):<50}" in err


def test_trace_memory_type_draws_a_png_of_the_reference_chain(mrq_worker, tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed (.ci/run installs it)")
    out = tmp_path / "memdbg"
    mrq_worker.start("--trace_memory", "--trace_memory_type=Leaky", f"--trace_memory_output_dir={out}", env=ENV)
    data = run_jobs(mrq_worker, "leak", 1)[0]
    graph = Path(data["memory_graph"])
    assert graph == out / f"Leaky-{data['_id']}.png"
    assert graph.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.dot"))


def test_without_graphviz_the_dot_file_is_written_and_the_log_names_the_package(mrq_worker, tmp_path, capfd):
    out = tmp_path / "memdbg"
    no_dot = tmp_path / "bin"
    no_dot.mkdir()
    path = os.pathsep.join([str(no_dot), str(Path(sys.executable).parent)])  # python, but no dot
    mrq_worker.start("--trace_memory", "--trace_memory_type", "Leaky", "--trace_memory_output_dir", str(out),
                     env={**ENV, "PATH": path})
    data = run_jobs(mrq_worker, "leak", 1)[0]
    graph = Path(data["memory_graph"])
    assert graph == out / f"Leaky-{data['_id']}.dot"
    text = graph.read_text()
    assert text.startswith("digraph ObjectGraph") and task("Leaky") in text and "KEPT" in text
    assert mrq_worker.stop() == 0
    assert "install graphviz (Debian/Ubuntu: apt-get install graphviz" in capfd.readouterr().err


def test_trace_memory_with_several_greenlets_is_a_clear_error(tmp_path):
    proc = run_cli("worker", "--trace_memory", "--greenlets", "4", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--trace_memory measures memory per job, which needs one job at a time" in proc.stderr
    assert "--memtrace_mode tracemalloc" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--trace_memory", "--memtrace_mode", "tracemalloc"], "choose one"),
    (["--plugins", "memtrace", "--greenlets", "3", "--trace_memory_type", "Leaky"], "needs the per-job mode"),
    (["--plugins", "memtrace", "--memtrace_mode", "nope"], "choose one of auto, objgraph, tracemalloc"),
    (["--plugins", "memtrace", "--memtrace_top", "0"], "--memtrace_top must be at least 1"),
])
def test_bad_settings_stop_the_worker_with_a_message(args, message, tmp_path):
    proc = run_cli("worker", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_tracemalloc_mode_names_the_leaking_line_with_many_greenlets(mrq_worker, capfd):
    mrq_worker.start("--plugins", "memtrace", "--greenlets", "3", env=ENV)  # auto: tracemalloc
    for _ in range(30):
        queue_job(task("leak"), {"n": 300, "sleep": 0.4})
        queue_job(task("noleak"), {"n": 300})

    def growing():
        report = mrq_worker.report() or {}
        sites = report.get("memtrace", {}).get("sites") or []
        return report if sites else None

    report = wait_until(growing, 30, "a report with growing allocation sites")
    memtrace = report["memtrace"]
    assert memtrace["mode"] == "tracemalloc" and memtrace["snapshots"] >= 3
    # The two lines of the task file that allocate what it keeps: the buffers (1 kB each), then the instances.
    buffers, instances = memtrace["sites"][:2]
    assert buffers["site"] == f"{TASKS}:{line_of('THE LEAKED BUFFER')}", memtrace["sites"]
    assert instances["site"] == f"{TASKS}:{line_of('THE LEAKING LINE')}", memtrace["sites"]
    assert instances["code"].startswith("KEPT.extend(") and instances["growth"] > 0 and instances["count"] > 0
    assert buffers["growth"] > 300 * 1000 and buffers["intervals"] >= 3
    mrq_worker.stop()
    err = capfd.readouterr().err
    assert f"{TASKS}:{line_of('THE LEAKING LINE')}: +" in err
