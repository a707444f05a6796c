"""Plugins: discovery, enabling, errors, listing, options, and every hook end to end.

``tests/plugins/recorder.py`` implements every hook and records each call as a JSON line in the file named
by ``MRQ_RECORDER_FILE``; the end-to-end tests run it in a real worker and check the recorded sequence.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mrq import hookspecs
from mrq.config import OPTIONS, Option, get_config
from mrq.exceptions import ConfigError, PluginError
from mrq.hookspecs import hookimpl
from mrq.plugins import (
    ENTRY_POINT_GROUP,
    FLAG_ENTRY_POINT_GROUP,
    PluginManager,
    installed_plugin_flags,
    installed_plugins,
)
from tests.plugins import recorder
from tests.plugins.recorder import read_records

ROOT = Path(__file__).resolve().parent.parent
T = "tests.tasks.general."
RECORDER = "tests.plugins.recorder"

#: Every hook of mrq/hookspecs.py, by phase (tests/test_hookspecs.py checks this list is complete).
ALL_HOOKS = [
    "mrq_add_hookspecs", "mrq_add_options", "mrq_configure", "mrq_job_statuses",
    "mrq_jobs_enqueuing", "mrq_jobs_enqueued",
    "mrq_worker_start", "mrq_worker_job_fields", "mrq_worker_services", "mrq_worker_report", "mrq_redis_data_lost",
    "mrq_worker_stopping",
    "mrq_worker_stop", "mrq_jobs_dequeued", "mrq_job_execute", "mrq_job_log_fields", "mrq_job_finished",
    "mrq_job_status_changed", "mrq_jobs_status_changed",
]


def cfg(*argv: str, env: dict[str, str] | None = None, command: str = "worker", **kwargs: Any):
    return get_config(command, argv=list(argv), env=env or {}, **kwargs)


#: Plugins really installed in this environment (mrq-cleaning, mrq-scheduler...): tests ignore them.
OTHERS = set(installed_plugins())


def without_others(lines: list[str]) -> list[str]:
    return [line for line in lines if line.split(" ", 1)[0] not in OTHERS]


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path, monkeypatch):
    """No ./mrq-config.py of the repository or elsewhere is read by accident."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _statuses_restored(monkeypatch):
    """Statuses declared by plugins (mrq_job_statuses) are process-wide: each test's are forgotten after it."""
    from mrq import status as st

    for name in ("ALL_STATUSES", "FINAL_STATUSES", "WAITING_STATUSES"):
        monkeypatch.setattr(st, name, getattr(st, name))
    monkeypatch.setattr(st, "_ALLOWED_FROM", dict(st._ALLOWED_FROM))


@pytest.fixture
def dist_dir(tmp_path, monkeypatch) -> Path:
    """An installed distribution 'mrq-test-plugins' 1.2.3 with entry points 'recorder' and 'broken'.

    importlib.metadata reads ``entry_points.txt`` from ``*.dist-info`` folders on sys.path.
    """
    root = tmp_path / "site"
    info = root / "mrq_test_plugins-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mrq-test-plugins\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nrecorder = {RECORDER}\nbroken = tests.plugins.does_not_exist\n"
        "[console_scripts]\nnot-a-plugin = tests.plugins.recorder:record\n")
    monkeypatch.syspath_prepend(str(root))
    return root


def run_cli(*args: str, env: dict[str, str] | None = None, pythonpath: list[str] | None = None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MRQ_")}
    full_env["PYTHONPATH"] = os.pathsep.join([*(pythonpath or []), str(ROOT)])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=60)


# ---------------------------------------------------------------------------------------------------
# Enabling
# ---------------------------------------------------------------------------------------------------

def test_recorder_implements_every_hook():
    specs = sorted(n for n, _ in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("mrq_"))
    assert sorted(ALL_HOOKS) == specs
    pm = cfg("--plugins", RECORDER).plugin_manager
    enabled = [row for row in pm.describe() if row["enabled"]]  # installed plugins are listed too
    assert enabled == [{"name": RECORDER, "version": "", "source": RECORDER, "enabled": True,
                        "hooks": sorted(ALL_HOOKS)}]


def test_enable_by_dotted_path():
    config = cfg("--plugins", RECORDER)
    pm = config.plugin_manager
    assert pm.enabled == [RECORDER]
    assert config.plugins == [RECORDER]
    assert pm.pm.get_plugin(RECORDER) is recorder
    assert config.recorder_flag is False  # its option joined the table


def test_enable_object_by_module_colon_attribute():
    pm = cfg("--plugins", "tests.plugins.recorder:RecorderSpecs").plugin_manager
    assert pm.enabled == ["tests.plugins.recorder:RecorderSpecs"]  # a class is instantiated; no hooks


def test_no_plugin_by_default():
    config = cfg()
    assert config.plugins == [] and config.plugin_manager.enabled == []
    assert "recorder_flag" not in config


def test_enable_by_entry_point_name(dist_dir):
    assert set(installed_plugins()) - OTHERS == {"recorder", "broken"}
    config = cfg("--plugins", "recorder")
    pm = config.plugin_manager
    assert pm.enabled == ["recorder"]
    assert pm.pm.get_plugin("recorder") is recorder
    rows = {r["name"]: r for r in pm.describe()}
    assert rows["recorder"] == {"name": "recorder", "version": "1.2.3", "enabled": True,
                                "hooks": sorted(ALL_HOOKS), "source": RECORDER}
    assert rows["broken"] == {"name": "broken", "version": "1.2.3", "enabled": False, "hooks": [],
                              "source": "tests.plugins.does_not_exist"}


def test_listing_imports_nothing(dist_dir, monkeypatch):
    monkeypatch.delitem(sys.modules, RECORDER)
    rows = PluginManager().describe()
    assert [r["name"] for r in rows if r["name"] not in OTHERS] == ["broken", "recorder"]
    assert RECORDER not in sys.modules


def test_disabled_plugins_are_never_imported(dist_dir, monkeypatch):
    """stevedore's NamedExtensionManager imports only the names it is given: enabling 'recorder' imports neither
    'marker' nor 'broken' (which would fail), and listing imports nothing."""
    info = dist_dir / "mrq_marker-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mrq-marker\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmarker = tests.plugins.import_marker\n")
    monkeypatch.delitem(sys.modules, "tests.plugins.import_marker", raising=False)
    config = cfg("--plugins", "recorder")
    assert config.plugin_manager.enabled == ["recorder"]
    assert {r["name"] for r in config.plugin_manager.describe()} >= {"recorder", "broken", "marker"}
    assert "tests.plugins.import_marker" not in sys.modules
    assert cfg("--plugins", "marker").plugin_manager.enabled == ["marker"]
    assert "tests.plugins.import_marker" in sys.modules


def test_a_plugin_installed_after_a_first_run_is_found_by_the_next_process(tmp_path):
    """stevedore caches the entry points on disk, keyed by sys.path and the installed distributions' metadata
    files: a distribution installed after a run is listed by the next process."""
    site, cache = tmp_path / "later-site", tmp_path / "cache"
    site.mkdir()
    env = {"XDG_CACHE_HOME": str(cache)}
    first = run_cli("plugins", env=env, pythonpath=[str(site)])
    assert first.returncode == 0 and "latecomer" not in first.stdout, first.stderr
    if not sys.executable.startswith("/tmp"):  # stevedore keeps no cache for an interpreter under /tmp
        assert list((cache / "python-entrypoints").iterdir())  # the cache was written
    info = site / "mrq_latecomer-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mrq-latecomer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nlatecomer = {RECORDER}\n")
    second = run_cli("plugins", env=env, pythonpath=[str(site)])
    assert f"latecomer 0.1 [disabled] ({RECORDER})" in second.stdout, second.stdout + second.stderr


def test_unknown_name_lists_installed_plugins(dist_dir):
    with pytest.raises(PluginError) as info:
        cfg("--plugins", "nope")
    message = str(info.value)
    assert "Unknown plugin 'nope'" in message
    assert "Installed plugins: " + ", ".join(sorted({"broken", "recorder"} | OTHERS)) + "." in message
    assert "not-a-plugin" not in message


def test_unknown_name_with_nothing_installed(monkeypatch):
    monkeypatch.setattr("mrq.plugins.installed_plugins", dict)
    with pytest.raises(PluginError, match="Unknown plugin 'nope'. Installed plugins: none."):
        cfg("--plugins", "nope")


def test_entry_point_that_fails_to_import(dist_dir):
    with pytest.raises(PluginError, match="Plugin 'broken' failed to import: ModuleNotFoundError"):
        cfg("--plugins", "broken")


def test_dotted_path_that_does_not_import():
    with pytest.raises(PluginError, match=r"Plugin 'tests.plugins.nope' could not be imported"):
        cfg("--plugins", "tests.plugins.nope")


def test_plugin_implementing_unknown_hook():
    with pytest.raises(PluginError) as info:
        cfg("--plugins", "tests.plugins.unknown_hook")
    assert "implements a hook MRQ does not know" in str(info.value)
    assert "mrq_no_such_hook" in str(info.value)


def test_unknown_hook_leaves_the_manager_clean():
    pm = PluginManager()
    pm.enable([RECORDER])
    with pytest.raises(PluginError):
        pm.enable(["tests.plugins.unknown_hook"])
    assert pm.enabled == [RECORDER]
    assert pm.pm.get_plugin("tests.plugins.unknown_hook") is None
    pm.pm.check_pending()  # nothing left pending


def test_plugin_with_wrong_hook_arguments():
    with pytest.raises(PluginError, match="(?s)'tests.plugins.bad_args' could not be registered.*colour"):
        cfg("--plugins", "tests.plugins.bad_args")


def test_enabling_twice_is_a_no_op():
    config = cfg("--plugins", f"{RECORDER},{RECORDER}")
    assert config.plugin_manager.enabled == [RECORDER]


def test_plugins_from_env_file_and_setup_context(tmp_path):
    assert cfg(env={"MRQ_PLUGINS": RECORDER}).plugin_manager.enabled == [RECORDER]
    assert cfg(env={"MRQ_PLUGINS": f"{RECORDER} tests.plugins.listener"}).plugins == \
        [RECORDER, "tests.plugins.listener"]
    path = tmp_path / "conf.py"
    path.write_text(f"PLUGINS = [{RECORDER!r}]\n")
    config = cfg("-c", str(path))
    assert config.plugin_manager.enabled == [RECORDER] and config.sources["plugins"] == "file"
    (tmp_path / "mrq-config.py").write_text(f"PLUGINS = {RECORDER!r}\n")  # a string works too
    assert cfg().plugin_manager.enabled == [RECORDER]
    # The command line wins over the env var, which wins over the file.
    config = cfg("--plugins", "tests.plugins.strict", env={"MRQ_PLUGINS": "nope"})
    assert config.plugins == ["tests.plugins.strict"]
    config = get_config("common", argv=None, env={}, extra={"plugins": f"{RECORDER},tests.plugins.listener"})
    assert config.plugin_manager.enabled == [RECORDER, "tests.plugins.listener"]


def test_plugin_options_from_cli_env_and_file(tmp_path):
    config = cfg("--plugins", RECORDER, "--recorder_flag")
    assert (config.recorder_flag, config.sources["recorder_flag"]) == (True, "cli")
    config = cfg(env={"MRQ_PLUGINS": RECORDER, "MRQ_RECORDER_FLAG": "yes"})
    assert (config.recorder_flag, config.sources["recorder_flag"]) == (True, "env")
    path = tmp_path / "c.py"
    path.write_text(f"PLUGINS = [{RECORDER!r}]\nRECORDER_FLAG = True\n")
    config = cfg("-c", str(path))
    assert (config.recorder_flag, config.sources["recorder_flag"]) == (True, "file")
    config = cfg("-c", str(path), "--no-recorder_flag", env={"MRQ_RECORDER_FLAG": "1"})
    assert (config.recorder_flag, config.sources["recorder_flag"]) == (False, "cli")
    with pytest.raises(ConfigError, match="'recorder_flag' from environment variable MRQ_RECORDER_FLAG"):
        cfg("--plugins", RECORDER, env={"MRQ_RECORDER_FLAG": "maybe"})


def test_plugin_option_needs_the_plugin():
    with pytest.raises(SystemExit):
        cfg("--recorder_flag")
    assert "recorder_flag" not in cfg(env={"MRQ_RECORDER_FLAG": "1"})


@pytest.fixture
def flag_dist(dist_dir) -> Path:
    """dist_dir, whose distribution also declares the activation flag ``recorder_flag = recorder``."""
    info = dist_dir / "mrq_test_plugins-1.2.3.dist-info"
    text = (info / "entry_points.txt").read_text()
    (info / "entry_points.txt").write_text(text + f"[{FLAG_ENTRY_POINT_GROUP}]\nrecorder_flag = recorder\n")
    return dist_dir


def test_activation_flag_enables_an_installed_plugin(flag_dist, monkeypatch, tmp_path):
    assert installed_plugin_flags()["recorder_flag"] == "recorder"
    config = cfg("--recorder_flag")
    assert config.plugins == ["recorder"] and config.recorder_flag is True
    assert config.sources["recorder_flag"] == "cli"
    config = cfg("--recorder_flag", "--plugins", "recorder")  # named twice: registered once
    assert config.plugin_manager.enabled == ["recorder"]
    assert cfg(env={"MRQ_RECORDER_FLAG": "1"}).plugins == ["recorder"]
    (tmp_path / "mrq-config.py").write_text("RECORDER_FLAG = True\n")
    assert cfg().plugins == ["recorder"]
    assert get_config("common", argv=None, env={}, extra={"recorder_flag": True}).plugins == ["recorder"]


def test_activation_flag_off_imports_nothing(flag_dist, monkeypatch):
    monkeypatch.delitem(sys.modules, RECORDER)
    for config in (cfg(), cfg(env={"MRQ_RECORDER_FLAG": "0"}), cfg(env={"MRQ_RECORDER_FLAG": "false"}),
                   cfg("--no-recorder_flag", env={"MRQ_RECORDER_FLAG": "1"}),  # the command line wins
                   cfg("--recorder_flag=0")):
        assert config.plugins == [] and "recorder_flag" not in config
    assert RECORDER not in sys.modules
    # Enabled by name, the plugin reads its option as usual: `--no-flag` is kept for it.
    config = cfg("--plugins", "recorder", "--no-recorder_flag", env={"MRQ_RECORDER_FLAG": "1"})
    assert config.plugins == ["recorder"] and config.recorder_flag is False


def test_activation_flag_scan():
    from mrq.config import _flag_in_argv

    assert _flag_in_argv("x", ["--x", "default"]) is True
    assert _flag_in_argv("x", ["--x=a,b"]) is True
    assert _flag_in_argv("x", ["--x", "--no-x"]) is False
    assert _flag_in_argv("x", ["--x=off"]) is False
    assert _flag_in_argv("x", ["--xy", "--", "--x"]) is None


def test_plugin_option_name_clash():
    class Clash:
        @hookimpl
        def mrq_add_options(self) -> list[Option]:
            return [Option("greenlets", int, 1, "taken")]

    pm = PluginManager()
    pm.register(Clash(), "clash")
    with pytest.raises(PluginError, match="Option 'greenlets' added by a plugin is already defined"):
        pm.plugin_options(taken=[o.name for o in OPTIONS])  # as get_config passes them


def test_mrq_configure_may_complete_or_refuse_the_config():
    assert cfg("--plugins", "tests.plugins.strict")["strict_checked"] is True
    with pytest.raises(ConfigError, match="greenlets must be at most 100"):
        cfg("--plugins", "tests.plugins.strict", "--greenlets", "500")
    proc = run_cli("worker", "--plugins", "tests.plugins.strict", "--greenlets", "500")
    assert proc.returncode == 2
    assert "mrq-worker: error: strict plugin: greenlets must be at most 100" in proc.stderr


def test_hook_mrq_add_hookspecs_declares_hooks_of_a_plugin():
    # The listener implements the recorder's own hook: it may be enabled before the recorder declares it.
    for order in ([RECORDER, "tests.plugins.listener"], ["tests.plugins.listener", RECORDER]):
        pm = cfg("--plugins", ",".join(order)).plugin_manager
        assert pm.hook.mrq_recorder_event(name="x", data={"n": 1}) == [{"heard": "x", "n": 1}]
    with pytest.raises(PluginError, match="mrq_recorder_event"):
        cfg("--plugins", "tests.plugins.listener")  # nobody declares it


def test_hook_mrq_add_hookspecs_is_historic(tmp_path, monkeypatch):
    monkeypatch.setenv("MRQ_RECORDER_FILE", str(tmp_path / "rec.jsonl"))
    pm = PluginManager()
    pm.register(recorder, "late")  # registered after the manager was built: still called
    assert [r["hook"] for r in read_records(tmp_path / "rec.jsonl")] == ["mrq_add_hookspecs", "mrq_job_statuses"]
    assert pm.hook.mrq_recorder_event(name="a", data={}) == []


def test_configuration_hooks_are_called_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MRQ_RECORDER_FILE", str(tmp_path / "rec.jsonl"))
    cfg("--plugins", RECORDER, "--recorder_flag")
    records = read_records(tmp_path / "rec.jsonl")
    assert [r["hook"] for r in records] == ["mrq_add_hookspecs", "mrq_job_statuses", "mrq_add_options",
                                            "mrq_configure"]
    assert records[-1] | {"pid": 0} == {"hook": "mrq_configure", "pid": 0, "command": "worker",
                                        "recorder_flag": True, "source": "cli"}


def test_trace_plugins(monkeypatch, caplog):
    monkeypatch.setenv("MRQ_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.WARNING, logger="mrq.plugins"):
        cfg("--plugins", RECORDER)
    traced = "\n".join(r.getMessage() for r in caplog.records if r.name == "mrq.plugins")
    assert "mrq_configure" in traced and "mrq_add_options" in traced


def test_no_trace_by_default(monkeypatch, caplog):
    monkeypatch.delenv("MRQ_TRACE_PLUGINS", raising=False)
    with caplog.at_level(logging.DEBUG, logger="mrq.plugins"):
        cfg("--plugins", RECORDER)
    assert not [r for r in caplog.records if r.name == "mrq.plugins"]


# ---------------------------------------------------------------------------------------------------
# Listing from the command line
# ---------------------------------------------------------------------------------------------------

def test_cli_list_plugins(dist_dir):
    proc = run_cli("worker", "--plugins", "recorder", "--list-plugins", pythonpath=[str(dist_dir)])
    assert proc.returncode == 0, proc.stderr
    lines = without_others(proc.stdout.splitlines())
    assert lines[0] == "broken 1.2.3 [disabled] (tests.plugins.does_not_exist)"
    assert lines[1] == f"recorder 1.2.3 [enabled] ({RECORDER})"
    assert lines[2] == "    hooks: " + ", ".join(sorted(ALL_HOOKS))
    assert len(lines) == 3


def test_cli_plugins_command(dist_dir):
    proc = run_cli("plugins", pythonpath=[str(dist_dir)])
    assert proc.returncode == 0, proc.stderr
    assert without_others(proc.stdout.splitlines()) == ["broken 1.2.3 [disabled] (tests.plugins.does_not_exist)",
                                        f"recorder 1.2.3 [disabled] ({RECORDER})"]
    proc = run_cli("plugins", env={"MRQ_PLUGINS": RECORDER})
    assert without_others(proc.stdout.splitlines())[0] == f"{RECORDER} - [enabled] ({RECORDER})"


def test_cli_no_plugins_installed():
    proc = run_cli("plugins")
    assert proc.returncode == 0
    if OTHERS:  # mrq's own plugins are installed here: each is listed, none enabled
        assert sorted(line.split(" ", 1)[0] for line in proc.stdout.splitlines()) == sorted(OTHERS)
        assert "[enabled]" not in proc.stdout
    else:
        assert proc.stdout.strip() == "No MRQ plugins installed (entry-point group 'mrq.plugins')."


def test_cli_unknown_plugin_exits_2(dist_dir):
    proc = run_cli("worker", "--plugins", "nope", pythonpath=[str(dist_dir)])
    assert proc.returncode == 2
    listing = ", ".join(sorted({"broken", "recorder"} | OTHERS))
    assert f"mrq-worker: error: Unknown plugin 'nope'. Installed plugins: {listing}." in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------
# Every hook, end to end in a real worker
# ---------------------------------------------------------------------------------------------------

def by_hook(records: list[dict[str, Any]], hook: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if r["hook"] == hook and all(r.get(k) == v for k, v in match.items())]


def index(records: list[dict[str, Any]], hook: str, **match: Any) -> int:
    for i, r in enumerate(records):
        if r["hook"] == hook and all(r.get(k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no {hook} {match} in {[r['hook'] for r in records]}")


@pytest.fixture
def recorded_run(mrq_worker, mrq_config, tmp_path, monkeypatch):
    """Run success, failure and retry jobs in a worker with the recorder; return everything recorded."""
    from mrq.context import get_plugin_manager
    from mrq.job import Job, queue_job

    here, there = tmp_path / "test-process.jsonl", tmp_path / "worker.jsonl"
    monkeypatch.setenv("MRQ_RECORDER_FILE", str(here))
    get_plugin_manager().register(recorder, "recorder")  # this process: enqueue, cancel, requeue

    cancelled = queue_job(T + "Add", {"a": 0, "b": 0})
    assert Job(cancelled).cancel()
    mrq_worker.start("--plugins", RECORDER, "--recorder_flag", "--greenlets", "2",
                     env={"MRQ_RECORDER_FILE": str(there)})
    ids = {"ok": queue_job(T + "Add", {"a": 41, "b": 1}),
           "fail": queue_job(T + "Fail", {"message": "kaput"}),
           "retry": queue_job(T + "Retry", {"succeed_after": 1, "delay": 0}),
           "cancelled": cancelled}
    mrq_worker.wait_for_idle()
    assert Job(ids["fail"]).requeue()
    mrq_worker.wait_for_idle()
    assert mrq_worker.stop() == 0
    docs = {k: Job(v).fetch().data for k, v in ids.items()}
    return {"ids": {k: str(v) for k, v in ids.items()}, "docs": docs, "here": read_records(here),
            "there": read_records(there), "report": mrq_worker.report(), "pid": mrq_worker.pid}


def test_hooks_end_to_end(recorded_run):
    ids, docs, here, there = (recorded_run[k] for k in ("ids", "docs", "here", "there"))
    report = recorded_run["report"]
    worker_id = str(report["_id"])
    hooks = [r["hook"] for r in there]

    assert {r["pid"] for r in there} == {recorded_run["pid"]}
    # Every hook was called, in the worker or in this process.
    assert set(ALL_HOOKS) <= set(hooks) | {r["hook"] for r in here}

    # Configuration, then the worker lifecycle.
    assert hooks[:4] == ["mrq_add_hookspecs", "mrq_job_statuses", "mrq_add_options", "mrq_configure"]
    assert there[3]["recorder_flag"] is True and there[3]["source"] == "cli"
    start = index(there, "mrq_worker_start")
    assert there[start]["worker"] == worker_id and there[start]["greenlets"] == 2
    assert there[start]["recorder_flag"] is True and there[start]["queues"] == ["default"]
    assert index(there, "mrq_worker_job_fields") == start + 1
    assert index(there, "mrq_worker_services") == start + 2
    assert index(there, "service_ran") > start
    assert hooks.count("service_ran") == 1 and hooks.count("mrq_worker_start") == 1
    stop = index(there, "mrq_worker_stop")
    assert hooks.count("mrq_worker_stop") == 1
    stopping = index(there, "mrq_worker_stopping")
    assert hooks.count("mrq_worker_stopping") == 1 and start < stopping < stop
    assert there[stopping]["reason"] == "signal" and there[stopping]["worker"] == worker_id
    assert hooks.count("mrq_redis_data_lost") == 1  # a fresh Redis: the first worker set MRQ's marker key
    job_hooks = {"mrq_jobs_dequeued", "mrq_job_execute", "mrq_job_finished", "mrq_job_status_changed"}
    assert all(start < i < stop for i, h in enumerate(hooks) if h in job_hooks)
    assert there[-1]["hook"] == "mrq_worker_report" and there[-1]["status"] == "stop"  # the final report
    assert report["recorder"]["flag"] is True and report["recorder"]["calls"] > 0

    # Each job: dequeued, execute before/after (in order), finished, then its status written.
    dequeued = [j["id"] for r in by_hook(there, "mrq_jobs_dequeued") for j in r["jobs"]]
    assert sorted(dequeued) == sorted([ids["ok"], ids["fail"], ids["fail"], ids["retry"], ids["retry"]])
    for name, runs in (("ok", [("success", None)]), ("fail", [("failed", "ValueError")] * 2),
                       ("retry", [("retry", "RetryInterrupt"), ("success", None)])):
        job = ids[name]
        assert [r["phase"] for r in by_hook(there, "mrq_job_execute", job=job)] == ["before", "after"] * len(runs)
        assert [r["error"] for r in by_hook(there, "mrq_job_execute", job=job, phase="after")] == \
            [error for _, error in runs]
        assert [r["status"] for r in by_hook(there, "mrq_job_finished", job=job)] == [s for s, _ in runs]
        assert [r["status"] for r in by_hook(there, "mrq_job_status_changed", job=job)] == [s for s, _ in runs]
        assert by_hook(there, "mrq_job_finished", job=job)[0]["worker"] == worker_id
        assert index(there, "mrq_jobs_dequeued") < index(there, "mrq_job_execute", job=job, phase="before") \
            < index(there, "mrq_job_execute", job=job, phase="after") \
            < index(there, "mrq_job_finished", job=job) < index(there, "mrq_job_status_changed", job=job)
        assert docs[name]["recorder_seen"] is True  # job.store() from the wrapper
    assert "result" in by_hook(there, "mrq_job_status_changed", job=ids["ok"])[0]["fields"]
    assert "traceback" in by_hook(there, "mrq_job_status_changed", job=ids["fail"])[0]["fields"]
    assert docs["ok"]["result"] == 42 and docs["fail"]["status"] == "failed"
    assert docs["retry"]["status"] == "success"

    # The cancelled job is skipped: not among the jobs handed to plugins, never executed.
    assert not by_hook(there, "mrq_job_execute", job=ids["cancelled"])
    assert docs["cancelled"]["status"] == "cancel" and "recorder_seen" not in docs["cancelled"]


def test_hook_mrq_job_log_fields_appends_fields_to_the_stored_lines(recorded_run):
    """Each line a task logs is stored with the fields of mrq_job_log_fields (`` name=value``), asked once per line
    in the worker, with the job that logged it; lines of the worker's own log are not stored, nor asked about."""
    from mrq.logger import job_logs

    ok, there = recorded_run["ids"]["ok"], recorded_run["there"]
    lines = job_logs(ok).splitlines()
    assert lines and all(line.endswith(f" recorder_job={ok}") for line in lines)
    assert "adding 41 and 1" in lines[0]
    assert len(by_hook(there, "mrq_job_log_fields", job=ok)) == len(lines)
    assert index(there, "mrq_job_execute", job=ok, phase="before") < index(there, "mrq_job_log_fields", job=ok) \
        < index(there, "mrq_job_execute", job=ok, phase="after")
    assert not by_hook(recorded_run["here"], "mrq_job_log_fields")


def test_hook_mrq_job_log_fields_costs_nothing_unimplemented_and_never_loses_a_line(mrq_config):
    """Without an implementation the handler does not call the hook; one that raises leaves the line as it is."""
    from bson import ObjectId

    from mrq.context import set_current_job
    from mrq.job import Job
    from mrq.logger import JobLogHandler

    plain = JobLogHandler(plugins=cfg().plugin_manager)
    assert plain.fields_hook is None

    class Raising:
        @hookimpl
        def mrq_job_log_fields(self, job):
            raise RuntimeError("no fields today")

    pm = cfg("--plugins", RECORDER).plugin_manager
    pm.register(Raising(), "raising")
    handler = JobLogHandler(plugins=pm)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.mrq.log_fields")
    logger.addHandler(handler)
    job = Job(ObjectId())
    set_current_job(job)
    try:
        logger.warning("kept")
    finally:
        set_current_job(None)
        logger.removeHandler(handler)
    assert handler._buffer[job.id] == ["kept"]


def test_hook_mrq_jobs_enqueued_and_status_changes_in_the_enqueuing_process(recorded_run):
    ids, here = recorded_run["ids"], recorded_run["here"]
    enqueued = by_hook(here, "mrq_jobs_enqueued")
    assert [r["job_ids"] for r in enqueued] == [[ids[k]] for k in ("cancelled", "ok", "fail", "retry")]
    assert {(r["queue"], r["delay"]) for r in enqueued} == {("default", 0.0)}
    assert [r["path"] for r in enqueued] == [T + "Add", T + "Add", T + "Fail", T + "Retry"]
    changed = by_hook(here, "mrq_job_status_changed")
    assert [(r["job"], r["status"]) for r in changed] == [(ids["cancelled"], "cancel"), (ids["fail"], "queued")]
    # Worker hooks never run in the enqueuing process.
    assert {r["hook"] for r in here} <= {"mrq_add_hookspecs", "mrq_job_statuses", "mrq_jobs_enqueuing",
                                         "mrq_jobs_enqueuing_after", "mrq_jobs_enqueued", "mrq_job_status_changed",
                                         "mrq_jobs_status_changed"}


def test_hook_mrq_jobs_status_changed_batches_the_per_job_changes(recorded_run):
    """In the worker, one call per batched write with the same (id, status) as the per-job hook, each right after
    them; in the enqueuing process, one call per Job.cancel/requeue."""
    here, there = recorded_run["here"], recorded_run["there"]
    per_job = [[r["job"], r["status"]] for r in by_hook(there, "mrq_job_status_changed")]
    batches = by_hook(there, "mrq_jobs_status_changed")
    assert [c for r in batches for c in r["changes"]] == per_job and len(batches) <= len(per_job)
    hooks = [r["hook"] for r in there]
    for i, h in enumerate(hooks):
        if h == "mrq_jobs_status_changed":
            n = len(there[i]["changes"])
            assert hooks[i - n:i] == ["mrq_job_status_changed"] * n
    ids = recorded_run["ids"]
    assert [r["changes"] for r in by_hook(here, "mrq_jobs_status_changed")] == \
        [[[ids["cancelled"], "cancel"]], [[ids["fail"], "queued"]]]


def test_hook_mrq_jobs_status_changed_by_bulk_actions(mrq_config, tmp_path, monkeypatch):
    from mrq.actions import cancel_jobs, requeue_jobs
    from mrq.context import get_plugin_manager
    from mrq.job import queue_jobs

    monkeypatch.setenv("MRQ_RECORDER_FILE", str(tmp_path / "rec.jsonl"))
    get_plugin_manager().register(recorder, "recorder")
    ids = queue_jobs(T + "Add", [{"a": i, "b": 0} for i in range(3)], queue="bulkq")
    assert cancel_jobs({"queue": "bulkq"})["cancelled"] == 3
    assert requeue_jobs({"queue": "bulkq"})["requeued"] == 3
    calls = by_hook(read_records(tmp_path / "rec.jsonl"), "mrq_jobs_status_changed")
    assert [sorted(c for c in r["changes"]) for r in calls] == [
        sorted([str(i), "cancel"] for i in ids), sorted([str(i), "queued"] for i in ids)]


def test_hook_mrq_job_statuses_declares_statuses_of_a_plugin(mrq_config):
    from mrq import status as st
    from mrq.context import get_plugin_manager
    from mrq.exceptions import PluginError

    get_plugin_manager().register(recorder, "recorder")
    assert "recorder_hold" in st.WAITING_STATUSES and "recorder_hold" not in st.FINAL_STATUSES
    assert "recorder_gone" in st.FINAL_STATUSES and {"recorder_hold", "recorder_gone"} <= st.ALL_STATUSES
    assert "recorder_hold" in st.allowed_from(st.CANCEL) and "recorder_gone" not in st.allowed_from(st.CANCEL)
    assert st.allowed_from(st.QUEUED) == st.ALL_STATUSES
    assert "recorder_hold" not in st.allowed_from(st.SUCCESS)  # a worker never ends a held job
    assert not st.declare("recorder_hold", "waiting")  # again, same kind: nothing changes

    class Clash:
        @hookimpl
        def mrq_job_statuses(self):
            return [{"name": "recorder_hold", "kind": "final"}]

    class Kernel:
        @hookimpl
        def mrq_job_statuses(self):
            return [{"name": "success", "kind": "final"}]

    class BadName:
        @hookimpl
        def mrq_job_statuses(self):
            return [{"name": "Not A Name", "kind": "waiting"}]

    for plugin, message in ((Clash, "already declared as a waiting status"), (Kernel, "MRQ's own statuses"),
                            (BadName, "a status name is")):
        pm = cfg().plugin_manager
        with pytest.raises(PluginError, match=message):
            pm.register(plugin(), plugin.__name__)


def test_hook_mrq_jobs_enqueuing_holds_jobs_back_and_takes_options(mrq_config, tmp_path, monkeypatch):
    from mrq.context import get_broker, get_plugin_manager
    from mrq.exceptions import InvalidParams
    from mrq.job import Job, queue_job, queue_jobs

    monkeypatch.setenv("MRQ_RECORDER_FILE", str(tmp_path / "rec.jsonl"))
    # No plugin takes an unknown option: refused before anything is written.
    with pytest.raises(InvalidParams, match=r"option\(s\) \['recorder_hold'\] that no enabled plugin takes"):
        queue_job(T + "Add", {"a": 1, "b": 1}, queue="holdq", recorder_hold=True)
    from mrq.context import connections
    assert connections.mongodb_jobs["mrq_jobs"].count_documents({"queue": "holdq"}) == 0

    get_plugin_manager().register(recorder, "recorder")
    held = queue_jobs(T + "Add", [{"a": 1, "b": 1}, {"a": 2, "b": 2}], queue="holdq", recorder_hold=True)
    pushed = queue_job(T + "Add", {"a": 3, "b": 3}, queue="holdq")
    with pytest.raises(InvalidParams, match="no enabled plugin takes"):
        queue_job(T + "Add", {"a": 1, "b": 1}, queue="holdq", recorder_typo=True)
    docs = {d["_id"]: d for d in connections.mongodb_jobs["mrq_jobs"].find({"queue": "holdq"})}
    assert len(docs) == 3
    assert [docs[i]["status"] for i in held] == ["recorder_hold"] * 2 and docs[held[0]]["recorder_held"]
    assert docs[pushed]["status"] == "queued"
    broker = get_broker()
    assert broker.redis.lrange(broker.queue_key("holdq"), 0, -1) == [str(pushed).encode()]
    records = read_records(tmp_path / "rec.jsonl")
    calls = by_hook(records, "mrq_jobs_enqueuing")
    assert [(r["job_ids"], r["hold"]) for r in calls] == [([str(i) for i in held], True), ([str(pushed)], False),
                                                           (calls[2]["job_ids"], False)]
    # The function returned is called after the insert with the ids created, then the pushed ones are enqueued.
    hooks = [r["hook"] for r in records]
    assert by_hook(records, "mrq_jobs_enqueuing_after")[0]["job_ids"] == [str(i) for i in held]
    assert [r["job_ids"] for r in by_hook(records, "mrq_jobs_enqueued")] == [[str(pushed)]]
    assert hooks.index("mrq_jobs_enqueuing_after") < hooks.index("mrq_jobs_enqueued")
    # A held job: Job.wait() keeps waiting, cancel applies.
    with pytest.raises(TimeoutError, match="still recorder_hold"):
        Job(held[0]).wait(timeout=0.3)
    assert Job(held[0]).cancel() and Job(held[0]).fetch().status == "cancel"


def test_hook_mrq_jobs_enqueued_batches(mrq_config, tmp_path, monkeypatch):
    from mrq.context import setup_context
    from mrq.job import queue_jobs

    monkeypatch.setenv("MRQ_RECORDER_FILE", str(tmp_path / "rec.jsonl"))
    setup_context(plugins=[RECORDER], redis=mrq_config.redis, mongodb_jobs=mrq_config.mongodb_jobs)
    ids = queue_jobs(T + "Add", [{"a": i, "b": 0} for i in range(1500)], queue="batchq", delay=30)
    enqueued = by_hook(read_records(tmp_path / "rec.jsonl"), "mrq_jobs_enqueued")
    assert [len(r["job_ids"]) for r in enqueued] == [1000, 500]
    assert [i for r in enqueued for i in r["job_ids"]] == [str(i) for i in ids]
    assert {(r["queue"], r["delay"], r["path"]) for r in enqueued} == {("batchq", 30.0, T + "Add")}


def test_hook_mrq_redis_data_lost_once_per_loss_and_mrq_worker_stopping_reasons(mrq_worker_factory, tmp_path):
    """Two workers; Redis loses its data (FLUSHALL): exactly one of them is called, once. A worker that reaches
    --max_jobs says so to mrq_worker_stopping."""
    from mrq.context import get_broker
    from mrq.testing import wait_until

    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    workers = [mrq_worker_factory({"MRQ_RECORDER_FILE": str(f)}).start("--plugins", RECORDER) for f in files]

    def lost() -> int:
        return sum(len(by_hook(read_records(f), "mrq_redis_data_lost")) for f in files)

    wait_until(lambda: lost() == 1, what="the first start noticed")
    get_broker().redis.flushall()
    wait_until(lambda: lost() == 2, what="the loss noticed")
    import time
    time.sleep(1)
    assert lost() == 2  # once per loss, across workers
    for w in workers:
        assert w.stop() == 0
    single = tmp_path / "max.jsonl"
    worker = mrq_worker_factory({"MRQ_RECORDER_FILE": str(single)})
    worker.start("--plugins", RECORDER, "--max_jobs", "1", wait=False)
    from mrq.job import queue_job
    queue_job(T + "Add", {"a": 1, "b": 1})
    assert worker.proc.wait(30) == 0
    assert [r["reason"] for r in by_hook(read_records(single), "mrq_worker_stopping")] == ["max_jobs"]


def test_hook_mrq_worker_job_fields_adds_fields_to_job_data(mrq_worker, tmp_path):
    """A field a plugin asks for (``recorder_mark``) is in ``job.data`` of the jobs it sees; asked once per worker,
    between mrq_worker_start and mrq_worker_services."""
    from mrq.context import connections
    from mrq.job import queue_job

    marked, plain = queue_job(T + "Add", {"a": 1, "b": 1}), queue_job(T + "Add", {"a": 2, "b": 2})
    connections.mongodb_jobs["mrq_jobs"].update_one({"_id": marked}, {"$set": {"recorder_mark": "here"}})
    there = tmp_path / "worker.jsonl"
    mrq_worker.start("--plugins", RECORDER, env={"MRQ_RECORDER_FILE": str(there)})
    mrq_worker.wait_for_idle()
    assert mrq_worker.stop() == 0
    records = read_records(there)
    hooks = [r["hook"] for r in records]
    assert hooks.count("mrq_worker_job_fields") == 1
    assert index(records, "mrq_worker_start") < index(records, "mrq_worker_job_fields") \
        < index(records, "mrq_worker_services")
    assert by_hook(records, "mrq_job_finished", job=str(marked))[0]["mark"] == "here"
    assert by_hook(records, "mrq_job_finished", job=str(plain))[0]["mark"] is None


def test_hook_mrq_worker_start_failure_stops_the_worker(mrq_worker):
    from mrq.job import Job, queue_job

    job_id = queue_job(T + "Add", {"a": 1, "b": 1})
    mrq_worker.start("--plugins", "tests.plugins.refuse_start", wait=False)
    assert mrq_worker.proc.wait(30) == 1
    assert Job(job_id).fetch().data["status"] == "queued"


@pytest.mark.parametrize("hook", ["mrq_worker_report", "mrq_worker_stop", "mrq_jobs_dequeued",
                                  "mrq_job_finished", "mrq_job_status_changed"])
def test_a_raising_hook_loses_no_job(mrq_worker, hook, tmp_path):
    """A plugin that raises in a worker hook is logged; the jobs still run and leave the in-flight record, and a
    job hook that raised for one job is still called for the others (the three jobs end in one status batch)."""
    from mrq.job import Job, queue_jobs

    calls = tmp_path / "calls"
    mrq_worker.start("--plugins", "tests.plugins.raising", "--greenlets", "3",
                     env={"MRQ_RAISING_HOOKS": hook, "MRQ_RAISING_FILE": str(calls), "MRQ_FLUSH_INTERVAL": "0.5"})
    ids = queue_jobs(T + "Add", [{"a": 1, "b": 2}] * 3)
    try:
        mrq_worker.wait_for_idle(timeout=4)
    finally:
        assert mrq_worker.stop(timeout=20) == 0
    assert [Job(i).fetch().data["status"] for i in ids] == ["success"] * 3
    for job_hook in ("mrq_jobs_dequeued", "mrq_job_finished", "mrq_job_status_changed"):
        seen = {w for line in calls.read_text().splitlines() if line.split()[0] == job_hook for w in line.split()[1:]}
        assert seen == {str(i) for i in ids}, job_hook


def test_worked_example_of_the_docs(mrq_worker, tmp_path):
    """The notifier + timing wrapper of docs/plugins.md, run as written, against a local webhook."""
    import http.server
    import json
    import re
    import threading

    from mrq.job import Job, queue_job

    text = (ROOT / "docs" / "plugins.md").read_text()
    example = text[text.index("## Worked example"):]
    code = re.search(r"```python\n(.*?)```", example, re.DOTALL).group(1)
    package = tmp_path / "mrq_notify"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(code)

    posted: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mrq_worker.start("--plugins", "mrq_notify.plugin", env={
            "PYTHONPATH": str(tmp_path), "MRQ_NOTIFY_WEBHOOK": f"http://127.0.0.1:{server.server_port}/x"})
        ok = queue_job(T + "Add", {"a": 1, "b": 2})
        bad = queue_job(T + "Fail", {"message": "kaput"})
        mrq_worker.wait_for_idle()
        assert mrq_worker.stop() == 0
    finally:
        server.shutdown()
        server.server_close()
    assert Job(ok).fetch().data["notify_seconds"] >= 0
    assert Job(bad).fetch().data["notify_seconds"] >= 0
    assert len(posted) == 1
    assert f"MRQ job {bad} ({T}Fail) ended with status failed" in posted[0]["text"]
    assert "kaput" in posted[0]["text"]


def test_packaging_of_the_worked_example_as_written(tmp_path):
    """docs/plugins.md's distribution mrq-notify, its files taken from the text: `pip install ./mrq-notify` builds
    it, resolves `mrq` to this MRQ (not the original 0.9.x) and `mrq-worker --list-plugins` shows it."""
    import re

    text = (ROOT / "docs" / "plugins.md").read_text()
    example = text[text.index("## Worked example"):]
    example = example[:example.index("\n## ")] if "\n## " in example else example
    blocks = dict(re.findall(r"```(python|toml|ini)\n(.*?)```", example, re.DOTALL))
    commands = re.search(r"```\n(pip install .*?)```", example, re.DOTALL).group(1).splitlines()
    assert commands[0] == "pip install ./mrq-notify", commands
    dist = tmp_path / "mrq-notify"
    (dist / "mrq_notify").mkdir(parents=True)
    assert "mrq_notify/__init__.py" in example and "pyproject.toml" in example
    (dist / "mrq_notify" / "__init__.py").write_text("")
    (dist / "mrq_notify" / "plugin.py").write_text(blocks["python"])
    (dist / "pyproject.toml").write_text(blocks["toml"])
    (dist / "setup.cfg").write_text(blocks["ini"])
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # Resolved against this environment (the MRQ of this checkout satisfies the requirement): nothing but the
    # plugin would be installed.
    out = subprocess.run([*pip, "install", "--dry-run", "./mrq-notify"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Would install mrq-notify-0.1.0" in out.stdout and "mrq-0." not in out.stdout, out.stdout
    # Installed aside (not into the test environment, whose plugin list other tests check).
    site = tmp_path / "site"
    out = subprocess.run([*pip, "install", "--quiet", "--no-deps", "--target", str(site), "./mrq-notify"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (site / "mrq_notify" / "plugin.py").exists(), sorted(p.name for p in site.iterdir())
    listed = subprocess.run([str(Path(sys.executable).parent / "mrq-worker"), "--list-plugins"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(site)))
    expected = commands[1].split("#")[1].strip()
    assert expected == "notify 0.1.0 [disabled] (mrq_notify.plugin)"
    assert expected in listed.stdout, listed.stdout + listed.stderr
