"""docker/: what can be checked without Docker (there is none on the test machines).

The compose file parses and says what docker/README.md says; every command it and the Dockerfile name is
a console script of setup.cfg (or of a plugin's setup.cfg); the paths the Dockerfile uses exist.
"""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"

yaml = pytest.importorskip("yaml", reason="PyYAML is in the 'test' extra: pip install -e '.[test]'")


def _console_scripts() -> set[str]:
    names: set[str] = set()
    for cfg in [ROOT / "setup.cfg", *ROOT.glob("plugins/*/setup.cfg")]:
        parser = configparser.ConfigParser()
        parser.read(cfg)
        text = parser.get("options.entry_points", "console_scripts", fallback="")
        names |= {line.split("=")[0].strip() for line in text.splitlines() if "=" in line}
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "mongo", "worker"}
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["stop_signal"] == "SIGINT"
    assert worker["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (DOCKER / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    env = worker["environment"]
    assert env["MRQ_REDIS"].startswith("redis://redis:")
    assert env["MRQ_MONGODB_JOBS"].startswith("mongodb://mongo:")
    assert set(worker["depends_on"]) == {"redis", "mongo"}
    for name in ("redis", "mongo"):
        assert "ports" not in services[name], f"{name} should not be published on the host"


def test_commands_are_console_scripts(compose: dict[str, Any]) -> None:
    scripts = _console_scripts()
    commands = [s["command"] for n, s in compose["services"].items() if n not in ("redis", "mongo")]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd, "the Dockerfile has an exec-form CMD"
    commands.append(json.loads(cmd.group(1)))
    for command in commands:
        assert command[0] in scripts, f"{command[0]} is not a console script of setup.cfg: {sorted(scripts)}"
    assert commands[-1][0] == "mrq-worker"
    # the dashboard service (commented out until the dashboard lands) names mrq-dashboard
    commented = [line.strip("# ").strip() for line in (DOCKER / "docker-compose.yml").read_text().splitlines()
                 if line.strip().startswith("#")]
    assert any('command: ["mrq-dashboard"' in line for line in commented)


def test_dockerfile_paths_exist() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "STOPSIGNAL SIGINT" in dockerfile
    assert re.search(r"^FROM python:3\.\d+-slim$", dockerfile, re.M)
    assert list(ROOT.glob("plugins/*/setup.cfg")), "the Dockerfile installs plugins/*/"
    assert (ROOT / "setup.cfg").exists() and (ROOT / "pyproject.toml").exists()
