"""Profiling with cProfile: the runs of chosen tasks (``--profile_tasks``), or the whole process (``--profile``).

A task's run is profiled in its own greenlet only: the tracer pauses the profiler whenever that greenlet is
switched out and resumes it when it comes back, so the other jobs of the process are not in the profile
and the functions that yielded (``gevent.sleep``, socket reads) show the time they waited.
"""

from __future__ import annotations

import atexit
import cProfile
import io
import os
import pstats
import re
import sys
from typing import Any

__all__ = ["top_functions", "write_stats", "start_process_profile"]

_process_profiler: list[cProfile.Profile] = []


def _label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~" and line == 0:
        return name  # a builtin: "{method 'join' of 'str' objects}"
    return f"{filename}:{line}({name})"


def top_functions(profiler: cProfile.Profile, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` functions of largest cumulative time: ``function``, ``calls``, ``tottime``, ``cumtime``."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for func, (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        label = _label(func)
        if "_lsprof.Profiler" in label:  # enable()/disable() of the profiler itself
            continue
        rows.append({"function": label, "calls": ncalls, "tottime": round(tottime, 6),
                     "cumtime": round(cumtime, 6)})
    rows.sort(key=lambda r: (-r["cumtime"], -r["tottime"]))
    return rows[:limit]


def write_stats(profiler: cProfile.Profile, folder: str, name: str) -> str:
    """Write ``folder/name.pstats`` (``python -m pstats FILE``, snakeviz...); returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".pstats")
    profiler.dump_stats(path)
    return path


def start_process_profile(folder: str, limit: int = 40) -> None:
    """The original ``--profile``: profile the whole process; at exit print the top functions by cumulative
    time on stderr and write the full stats to ``folder/mrq-<pid>.pstats``. Once per process."""
    if _process_profiler:
        return
    profiler = cProfile.Profile()
    _process_profiler.append(profiler)

    def report() -> None:
        profiler.disable()
        try:
            path = write_stats(profiler, folder, f"mrq-{os.getpid()}")
        except OSError as exc:
            path = f"(not written: {exc})"
        print(f"\nmrq --profile: whole-process profile, top {limit} functions by cumulative time "
              f"(full stats: {path})", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(limit)

    atexit.register(report)
    profiler.enable()
