"""mrq-greentrace in real ``mrq-worker`` processes."""

from __future__ import annotations

import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mrq.job import Job, queue_job
from mrq.testing import wait_until

HERE = Path(__file__).resolve().parent
TASKS = HERE / "greentrace_tasks.py"
ENV = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def task(name: str) -> str:
    return f"greentrace_tasks.{name}"


def line_of(marker: str) -> int:
    return next(i for i, line in enumerate(TASKS.read_text().splitlines(), 1) if marker in line)


def doc(job_id):
    return Job(job_id).fetch().data


def report_with(worker, *paths: str) -> dict:
    """The worker's first report whose greentrace totals include every one of ``paths``."""
    def ready():
        report = worker.report() or {}
        done = {t["path"] for t in report.get("greentrace", {}).get("tasks", []) if t["jobs"]}
        return report if set(paths) <= done else None
    return wait_until(ready, 15, f"a report with {paths}")


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MRQ_")}
    full_env.update(ENV, **(env or {}))
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=60)


def test_cpu_time_and_switches_of_two_jobs_running_at_once(mrq_worker):
    # The original's flags: --trace_greenlets enables the plugin, --gevent is --greenlets.
    mrq_worker.start("--trace_greenlets", "--gevent", "2", env=ENV)
    napper = queue_job(task("nap"), {"seconds": 1.0})
    burner = queue_job(task("burn"), {"seconds": 0.3})
    mrq_worker.wait_for_idle()
    nap, burn = doc(napper), doc(burner)
    assert nap["status"] == burn["status"] == "success"
    assert burn["datestarted"] < nap["dateupdated"] and nap["datestarted"] < burn["dateupdated"]  # overlapped
    assert burn["time"] >= 0.25, burn
    assert nap["time"] < 0.05 and nap["switches"] >= 1, nap
    report = report_with(mrq_worker, task("nap"), task("burn"))
    assert "greentrace" in report["config"]["plugins"]
    tasks = {t["path"]: t for t in report["greentrace"]["tasks"]}
    assert tasks[task("burn")]["jobs"] == 1 and tasks[task("burn")]["cpu"] >= 0.25
    assert tasks[task("burn")]["cpu_max"] == tasks[task("burn")]["cpu"]
    assert tasks[task("nap")]["cpu"] < 0.05
    assert mrq_worker.stop() == 0


def test_subpool_greenlets_count_for_their_job(mrq_worker):
    mrq_worker.start("--plugins", "greentrace", env=ENV)
    job_id = queue_job(task("burn_in_subpool"), {"seconds": 0.1, "n": 3})
    mrq_worker.wait_for_idle()
    data = doc(job_id)
    assert data["status"] == "success" and data["time"] >= 0.25, data


def test_running_jobs_show_their_figures_in_the_report(mrq_worker):
    mrq_worker.start("--plugins", "greentrace", env=ENV)
    job_id = queue_job(task("nap"), {"seconds": 4})

    def running_entry():
        report = mrq_worker.report() or {}
        return next((j for j in report.get("jobs", []) if j["id"] == job_id and "time" in j), None)

    deadline = time.monotonic() + 15
    while (entry := running_entry()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert entry is not None, "no report showed the running job with its figures"
    assert entry["switches"] >= 1 and entry["time"] < 0.05


def test_a_blocking_call_is_logged_with_its_line_and_stored_on_the_job(mrq_worker, capfd):
    mrq_worker.start("--plugins", "greentrace", env=ENV)
    quick = queue_job(task("nap"), {"seconds": 0.01})
    blocker = queue_job(task("block"), {"seconds": 0.3})
    mrq_worker.wait_for_idle()
    data = doc(blocker)
    assert data["status"] == "success"
    blocked = data["blocked"]
    assert blocked["count"] == 1 and blocked["ms"] >= 250 and blocked["sampled"] is True
    assert blocked["where"].startswith(f"{TASKS}:{line_of('THE BLOCKING LINE')} in block"), blocked
    assert "blocked" not in doc(quick)
    report = report_with(mrq_worker, task("nap"), task("block"))
    tasks = {t["path"]: t for t in report["greentrace"]["tasks"]}
    assert tasks[task("block")]["blocks"] == 1 and tasks[task("nap")]["blocks"] == 0
    assert report["greentrace"]["worst_block"]["path"] == task("block")
    assert mrq_worker.stop() == 0
    err = capfd.readouterr().err
    assert f"greentrace: job {blocker} ({task('block')}) ran" in err
    assert f"{TASKS}:{line_of('THE BLOCKING LINE')} in block" in err


def test_block_detection_can_be_turned_off(mrq_worker):
    mrq_worker.start("--plugins", "greentrace", "--trace_greenlets_block_ms", "0", env=ENV)
    job_id = queue_job(task("block"), {"seconds": 0.3})
    mrq_worker.wait_for_idle()
    data = doc(job_id)
    assert "blocked" not in data and data["time"] < 0.1  # sleeping uses no CPU
    assert report_with(mrq_worker, task("block"))["greentrace"]["blocks"] == 0


def test_profile_tasks_stores_the_top_functions_and_writes_pstats(mrq_worker, tmp_path):
    folder = tmp_path / "profiles"
    mrq_worker.start("--profile_tasks", f"{task('profiled_work')},other.Task", "--profile_tasks_dir", str(folder),
                     "--greenlets", "2", env=ENV)
    profiled = queue_job(task("profiled_work"), {"n": 18})
    other = queue_job(task("burn"), {"seconds": 0.2})
    mrq_worker.wait_for_idle()
    data = doc(profiled)
    assert data["status"] == "success"
    functions = [row["function"] for row in data["profile"]["top"]]
    assert any(f.endswith("greentrace_tasks.py:" + str(line_of("def profiled_work")) + "(profiled_work)")
               for f in functions), functions
    assert not any("(burn)" in f for f in functions)  # the other job's greenlet is not in it
    fib = next(r for r in data["profile"]["top"] if r["function"].endswith("(fib)"))
    assert fib["calls"] > 1000
    stats = pstats.Stats(data["profile"]["file"])
    assert Path(data["profile"]["file"]).parent == folder
    assert any(name == "profiled_work" for (_f, _l, name) in stats.stats)  # type: ignore[attr-defined]
    assert "profile" not in doc(other)


def test_whole_process_profile_is_printed_at_exit(mrq_worker, tmp_path, capfd):
    mrq_worker.start("--profile", "--profile_tasks_dir", str(tmp_path), env=ENV)
    queue_job(task("profiled_work"), {"n": 15})
    mrq_worker.wait_for_idle()
    assert mrq_worker.stop() == 0
    err = capfd.readouterr().err
    assert "mrq --profile: whole-process profile" in err and "cumulative" in err
    assert list(tmp_path.glob("mrq-*.pstats"))


@pytest.mark.parametrize("args, message", [
    (["--profile", "--profile_tasks", "a.b"], "cannot be combined"),
    (["--trace_greenlets", "--trace_greenlets_block_ms", "-1"],  # the kernel refuses a negative number first
     "option 'trace_greenlets_block_ms' from command line --trace_greenlets_block_ms: '-1' is out of range"),
    (["--trace_greenlets", "--profile_tasks_top", "0"], "--profile_tasks_top must be at least 1"),
])
def test_bad_settings_stop_the_worker_with_a_message(args, message, tmp_path):
    proc = run_cli("worker", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_help_lists_the_options_once_enabled(tmp_path):
    proc = run_cli("worker", "--trace_greenlets", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for flag in ("--trace_greenlets_block_ms", "--profile_tasks", "--profile_tasks_dir", "--profile"):
        assert flag in proc.stdout


def test_profile_works_for_mrq_run_too(tmp_path):
    proc = run_cli("run", "--profile", "--profile_tasks_dir", str(tmp_path), task("fib"), '{"n": 22}', cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "17711", proc.stderr
    assert "mrq --profile: whole-process profile" in proc.stderr and "(fib)" in proc.stderr
    assert list(tmp_path.glob("mrq-*.pstats"))


def test_memtrace_s_objgraph_pass_is_not_blamed_on_the_job(mrq_worker, capfd):
    """With memtrace in objgraph mode, its gc.collect + typestats around each job holds the hub for tens of ms in
    the job's greenlet: greentrace blamed the job (a nap that never blocks) for it."""
    mrq_worker.start("--plugins", "greentrace,memtrace", "--trace_memory", "--greenlets", "1",
                     "--trace_greenlets_block_ms", "5", env=ENV)
    naps = [queue_job(task("nap"), {"seconds": 0.01}) for _ in range(3)]
    mrq_worker.wait_for_idle()
    for job_id in naps:
        data = doc(job_id)
        assert data["status"] == "success" and "memory_growth" in data, data
        assert "blocked" not in data, data["blocked"]
    report = report_with(mrq_worker, task("nap"))
    assert {t["path"]: t for t in report["greentrace"]["tasks"]}[task("nap")]["blocks"] == 0
    assert mrq_worker.stop() == 0
    err = capfd.readouterr().err
    assert not any(f"greentrace: job {job_id}" in err for job_id in naps), err
