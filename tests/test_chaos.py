"""The short chaos run of ``make chaos`` (bench/chaos.py): 2,000 jobs through 3 worker processes under SIGKILL,
SIGTERM, Redis restarted empty, MongoDB restarted and frozen servers. No job is lost, every job ends final."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_chaos_run_loses_nothing(tmp_path):
    figures = tmp_path / "chaos.json"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--n", "2000", "--duration", "20",
                          "--events", "8", "--seed", "7", "--json", str(figures)],
                         capture_output=True, text=True, timeout=900)
    print(out.stdout, out.stderr[-3000:])
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    line = out.stdout.splitlines()[0]
    assert " lost=0 " in line and " not_final=0 " in line, line
    import json
    data = json.loads(figures.read_text())
    assert data["events"] >= 2 and data["lost"] == 0  # faults did happen (how many: as fast as the jobs run)


def test_chaos_script_arguments(tmp_path):
    for args, code in ((["--help"], 0), (["--nope"], 2), (["--n", "0"], 2)):
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), *args], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == code and "Traceback" not in out.stderr, out
