"""SCHEDULER_TASKS validation: through the real config resolution, and a real mrq-worker that refuses to start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mrq.config import get_config
from mrq.exceptions import ConfigError

T = "tests.tasks.general.add"


def resolve(tmp_path, tasks_source: str, *argv: str):
    path = tmp_path / "mrq-config.py"
    path.write_text("import datetime\nSCHEDULER_TASKS = " + tasks_source + "\n")
    return get_config("worker", argv=["--plugins", "scheduler", "--config", str(path), *argv], env={})


def test_valid_config_and_options(tmp_path):
    config = resolve(tmp_path, f"""[
        {{"path": "{T}", "params": {{"a": 1, "b": 2}}, "interval": 60}},
        {{"path": "{T}", "dailytime": datetime.time(9, 30), "weekday": 0, "queue": "q"}},
        {{"path": "{T}", "dailytime": "09:30:15", "monthday": 31, "timezone": "Europe/Paris"}},
        {{"path": "{T}", "cron": "*/5 8-18 * * mon-fri", "name": "sync"}},
    ]""", "--scheduler_interval", "2.5", "--scheduler_timezone", "Asia/Tokyo", "--scheduler_orphan_ttl", "3600")
    assert config["scheduler_interval"] == 2.5
    assert config["scheduler_orphan_ttl"] == 3600
    assert config["scheduler_timezone"] == "Asia/Tokyo"
    assert len(config["scheduler_tasks"]) == 4
    assert "scheduler" in config["plugins"]


@pytest.mark.parametrize("tasks, message", [
    ('{"path": "x.y", "interval": 1}', "SCHEDULER_TASKS must be a list of dicts, not dict"),
    ('["x.y"]', "SCHEDULER_TASKS[0]: must be a dict"),
    (f'[{{"path": "{T}", "interval": 1}}, {{"interval": 5}}]', "SCHEDULER_TASKS[1]: missing 'path'"),
    ('[{"path": "nodots", "interval": 5}]', "'path' 'nodots' is not a dotted task path"),
    (f'[{{"path": "{T}"}}]', f"SCHEDULER_TASKS[0] ('{T}'): no schedule: give one of 'interval'"),
    (f'[{{"path": "{T}", "interval": 5, "cron": "* * * * *"}}]', "two schedule kinds (interval and cron)"),
    (f'[{{"path": "{T}", "interval": 5, "weekday": 1}}]', "'weekday' needs 'dailytime'"),
    (f'[{{"path": "{T}", "monthday": 1}}]', "no schedule"),
    (f'[{{"path": "{T}", "cron": "0 9 * * *", "monthday": 1}}]', "'monthday' needs 'dailytime'"),
    (f'[{{"path": "{T}", "dailytime": "9:00", "weekday": 1, "monthday": 2}}]', "'weekday' or 'monthday', not both"),
    (f'[{{"path": "{T}", "dailytime": "9:00", "weekday": 7}}]', "weekday 7 must be 0 (Monday) .. 6 (Sunday)"),
    (f'[{{"path": "{T}", "dailytime": "9:00", "monthday": 32}}]', "'monthday' must be a day of the month 1..31"),
    (f'[{{"path": "{T}", "dailytime": "25:00"}}]', "bad 'dailytime': '25:00' is not a time"),
    (f'[{{"path": "{T}", "dailytime": 900}}]', "bad 'dailytime': 900 is not a time"),
    (f'[{{"path": "{T}", "interval": 0}}]', "'interval' must be a number of seconds > 0, not 0"),
    (f'[{{"path": "{T}", "interval": "60"}}]', "'interval' must be a number of seconds > 0, not '60'"),
    (f'[{{"path": "{T}", "cron": "61 * * * *"}}]', "bad 'cron': minute field: 61 is out of range 0-59"),
    (f'[{{"path": "{T}", "cron": "0 9 * *"}}]', "bad 'cron': '0 9 * *' has 4 field(s)"),
    (f'[{{"path": "{T}", "cron": "0 9 * * *", "timezone": "Mars/Base"}}]', "unknown timezone 'Mars/Base'"),
    (f'[{{"path": "{T}", "interval": 5, "timezone": "UTC"}}]', "'timezone' applies to 'dailytime' and 'cron' only"),
    (f'[{{"path": "{T}", "interval": 5, "params": [1, 2]}}]', "'params' must be a dict, not list"),
    (f'[{{"path": "{T}", "interval": 5, "params": {{"f": object()}}}}]', "'params' cannot be stored in MongoDB"),
    (f'[{{"path": "{T}", "interval": 5, "queue": "a b"}}]', "'queue': Queue name 'a b' is invalid: it contains ' '"),
    (f'[{{"path": "{T}", "interval": 5, "queue": "a,b"}}]', "'queue': Queue name 'a,b' is invalid: it contains ','"),
    (f'[{{"path": "{T}", "interval": 5, "queue": "x_raw"}}]', "'queue': Queue 'x_raw' is a raw queue"),
    (f'[{{"path": "{T}", "intervall": 5}}]', "unknown key(s) ['intervall']"),
    (f'[{{"path": "{T}", "interval": 5, "name": 3}}]', "'name' must be a non-empty string without surrounding"),
    (f'[{{"path": "{T}", "interval": 5, "name": " poll"}}]', "not ' poll'"),
    (f'[{{"path": "{T}", "interval": 5, "name": "poll"}}, {{"path": "{T}", "interval": 9, "name": "poll"}}]',
     f"SCHEDULER_TASKS[1] ('{T}'): name 'poll' is already the name of SCHEDULER_TASKS[0]: names must be unique"),
    (f'[{{"path": "{T}", "interval": 5, "params": {{"a": 1}}}}, '
     f'{{"path": "{T}", "interval": 5.0, "params": {{"a": 1}}}}]',
     f"SCHEDULER_TASKS[1] ('{T}'): duplicate of SCHEDULER_TASKS[0]"),
])
def test_invalid_entries(tmp_path, tasks, message):
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, tasks)
    assert message in str(info.value)


def test_invalid_options(tmp_path):
    ok = f'[{{"path": "{T}", "cron": "0 9 * * *"}}]'
    with pytest.raises(ConfigError, match="--scheduler_timezone: unknown timezone 'Nowhere'"):
        resolve(tmp_path, ok, "--scheduler_timezone", "Nowhere")
    with pytest.raises(ConfigError, match="--scheduler_interval must be > 0"):
        resolve(tmp_path, ok, "--scheduler_interval", "0")
    with pytest.raises(ConfigError, match=r"--scheduler_orphan_ttl 59.0 is too short: it must be at least 60 s"):
        resolve(tmp_path, ok, "--scheduler_orphan_ttl", "59")
    with pytest.raises(ConfigError, match="at least 180 s"):
        resolve(tmp_path, ok, "--scheduler_orphan_ttl", "100", "--scheduler_interval", "30")
    assert resolve(tmp_path, ok)["scheduler_orphan_ttl"] == 7 * 86400


def test_timezone_aware_dailytime_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="must be a naive time: give its zone with the 'timezone' key"):
        resolve(tmp_path, f'[{{"path": "{T}", "dailytime": datetime.time(9, tzinfo=datetime.timezone.utc)}}]')


def test_real_worker_refuses_to_start(tmp_path, mrq_urls, request):
    path = tmp_path / "mrq-config.py"
    path.write_text(f'SCHEDULER_TASKS = [{{"path": "{T}", "interval": 5}}, '
                    f'{{"path": "{T}", "dailytime": "09:00", "weekday": 8}}]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "mrq.cli", "worker", "--plugins", "scheduler", "--config", str(path),
         "--redis", mrq_urls.redis, "--mongodb", mrq_urls.mongodb],
        cwd=str(request.config.rootpath), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"mrq-worker: error: SCHEDULER_TASKS[1] ('{T}'): weekday 8 must be 0"), proc.stderr
    assert "Traceback" not in proc.stderr
