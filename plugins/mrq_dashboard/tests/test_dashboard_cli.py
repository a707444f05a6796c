"""``mrq-dashboard``: --help, no arguments (serves, answers, stops on SIGINT), bad arguments (exit 2)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request

from conftest import HERE

SCRIPT = shutil.which("mrq-dashboard", path=os.path.dirname(sys.executable)) or "mrq-dashboard"


def _env(urls, **extra):
    return dict(os.environ, MRQ_REDIS=urls.redis, MRQ_MONGODB_JOBS=urls.mongodb, **extra)


def test_help_lists_the_options():
    result = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--dashboard_port", "--dashboard_ip", "--dashboard_httpauth", "--dashboard_queue",
                   "--dashboard_readonly", "--dashboard_allowed_hosts", "--redis", "--mongodb_jobs", "--plugins"):
        assert option in result.stdout, option
    assert "MRQ_DASHBOARD_PORT" in result.stdout


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_no_arguments_serves_on_the_defaults(dashboard_urls, dash):
    extra = {} if _port_free(5555) else {"MRQ_DASHBOARD_PORT": "0"}  # 5555 taken by someone else: any port
    proc = subprocess.Popen([SCRIPT], cwd=str(HERE), env=_env(dashboard_urls, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("MRQ dashboard: http://127.0.0.1:"), line + proc.stderr.read()
        if not extra:
            assert line.strip() == "MRQ dashboard: http://127.0.0.1:5555/"
        with urllib.request.urlopen(line.split()[-1] + "api/statuses", timeout=30) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_arguments_exit_2_with_a_message(dashboard_urls, dash):
    env = _env(dashboard_urls)
    cases = [
        (["--dashboard_port", "abc"], "dashboard_port"),
        (["--dashboard_port", "70000"], "not a TCP port"),
        (["--dashboard_httpauth", "nocolon"], "user:password"),
        (["--dashboard_allowed_hosts", "http://mrq.example.com"], "not a host name"),
        (["--no-such-option"], "unrecognized arguments"),
        (["--redis", "http://nope"], "not a Redis URI"),
        (["--plugins", "nosuchplugin"], "Unknown plugin 'nosuchplugin'"),
    ]
    for args, message in cases:
        result = subprocess.run([SCRIPT, *args], cwd=str(HERE), env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_version():
    result = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("mrq-dashboard 1.0.0 (MRQ ")


def test_list_plugins():
    result = subprocess.run([SCRIPT, "--list-plugins"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "dashboard 1.0.0 [enabled] (mrq_dashboard.plugin)" in result.stdout
