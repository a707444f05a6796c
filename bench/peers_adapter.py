#!/usr/bin/env python
"""The peers' side of ``bench_mrq.py --peers``: run under the peers' venv, with their harness left as it is.

    /tmp/benchenv/bin/python bench/peers_adapter.py --peers-dir ../shared/bench \\
        --only rq-simple,huey-thread-w1 --n 5000 --rep 1 --out /tmp/peers-1.json

For each configuration of ``peers_bench.py`` named in ``--only``, in order:

1. **Idle RSS**: the worker started with the harness's own command line (its ``CONFIGS``), with no job in Redis
   (``--burst`` is left out: RQ and arq would exit at once), sampled every 100 ms until the RSS of its process
   tree is stable (1% over 1 s, at least 3 s after the start, at most 10 s); then stopped with its graceful
   signal (SIGINT for the burst ones), then SIGKILL of its process group.
2. **The trial**: ``peers_bench.run_trial`` itself (enqueue, one worker, stamps, result check, peak RSS), with two
   additions that change nothing it measures: its /proc sampler also records the tree's CPU time at each 20 ms
   sample, and the stamp file it reads is kept in memory before it deletes it. Worker CPU per job = CPU of the
   worker's process tree between the first job start and the last job end (interpolated between samples) / N.

JSON to ``--out``: ``{config: {"concurrency", "system", "bulk_api", "idle": {...}, "run": {...}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchproc import ProcSampler, parse_stamps, stamp_window  # noqa: E402


def idle_worker(pb: Any, name: str, url: str, workdir: str) -> dict[str, Any]:
    """Start config ``name``'s worker on an empty Redis and measure its settled RSS."""
    _, _, argv_fn, stop = pb.CONFIGS[name]
    argv = [a for a in argv_fn(url) if a != "--burst"]
    env = dict(os.environ, PYTHONPATH=pb.APPS, BENCH_REDIS_URL=url, PYTHONUNBUFFERED="1",
               BENCH_STAMP_FILE=os.path.join(workdir, f"idle-stamps-{name}.txt"))
    with open(os.path.join(workdir, f"idle-{name}.log"), "w") as log:
        proc = subprocess.Popen(argv, cwd=pb.APPS, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    sampler = ProcSampler(proc.pid)
    try:
        rss = sampler.wait_idle(min_s=3.0, stable_s=1.0, max_s=10.0, alive=lambda: proc.poll() is None)
        now = sampler.samples[-1][0]
        idle_cpu = sampler.cpu_between(now - 2.0, now) if len(sampler.samples) > 2 else None
        out = {"idle_rss_mb": rss / 1024 / 1024, "idle_procs": sampler.max_procs,
               "idle_cpu_pct": idle_cpu / 2.0 * 100 if idle_cpu is not None else None,
               "idle_sampled_s": now - sampler.samples[0][0], "alive": proc.poll() is None,
               "argv": " ".join([os.path.basename(argv[0])] + argv[1:])}
    finally:
        try:
            proc.send_signal(signal.SIGINT if stop == "burst" else stop)
            proc.wait(15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-dir", required=True, help="the folder of peers_bench.py")
    ap.add_argument("--only", required=True, help="comma-separated config names of peers_bench.py")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rep", type=int, default=1, help="repeat number (for file names only)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default="/tmp/mrq-bench-peers")
    a = ap.parse_args()

    sys.path.insert(0, a.peers_dir)
    import benchlib  # the harness's helpers (on sys.path once peers_bench is importable)
    import peers_bench as pb

    names = [x for x in a.only.split(",") if x]
    unknown = [x for x in names if x not in pb.CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; peers_bench.py has {list(pb.CONFIGS)}")
    os.makedirs(a.workdir, exist_ok=True)

    samplers: list[ProcSampler] = []

    class CpuProcTree(benchlib.ProcTree):  # the harness's RSS sampler, plus CPU time per sample
        def __init__(self, root_pid: int) -> None:
            super().__init__(root_pid)
            samplers.append(ProcSampler(root_pid))

        def sample(self) -> None:
            super().sample()
            samplers[-1].sample()

    stamps_seen: dict[str, bytes] = {}
    read_stamps = pb.read_stamps

    def keep_stamps(path: str) -> bytes:
        data = read_stamps(path)
        stamps_seen[path] = data
        return data

    benchlib.ProcTree = CpuProcTree
    pb.read_stamps = keep_stamps

    url, redis_proc = benchlib.start_redis(6390, a.workdir)
    os.environ["BENCH_REDIS_URL"] = url  # read by the apps at import
    results: dict[str, Any] = {}
    adapters: dict[Any, Any] = {}
    try:
        for name in names:
            cls, conc, _, _ = pb.CONFIGS[name]
            from redis import Redis
            Redis.from_url(url).flushall()
            idle = idle_worker(pb, name, url, a.workdir)
            if cls not in adapters:
                adapters[cls] = cls(url)
            samplers.clear()
            run = pb.run_trial(name, adapters[cls], url, a.n, a.timeout, a.workdir, a.rep)
            stamp_path = os.path.join(a.workdir, f"stamps-{name}-{a.rep}.txt")
            window = stamp_window(parse_stamps(stamps_seen.pop(stamp_path, b"")), range(a.n))
            cpu = samplers[-1].cpu_between(window["first_start"], window["last_end"]) \
                if samplers and "first_start" in window else None
            run["cpu_window_s"] = cpu
            run["cpu_us_per_job"] = cpu / a.n * 1e6 if cpu is not None else None
            run["idle_rss_mb"] = idle["idle_rss_mb"]
            results[name] = {"system": cls.name, "concurrency": conc, "bulk_api": cls.bulk_api, "idle": idle,
                             "run": run}
            print(f"[peers {a.rep}] {name:20s} ok={run['ok']!s:5s} proc={run.get('process_per_s') or 0:,.0f}/s "
                  f"cpu/job={run['cpu_us_per_job'] or 0:.0f}us idle={idle['idle_rss_mb']:.1f}MB "
                  f"loaded={run.get('peak_rss_tree_mb') or 0:.1f}MB", file=sys.stderr, flush=True)
            if not run["ok"]:
                print("   worker log tail:\n" + run.get("worker_log_tail", ""), file=sys.stderr, flush=True)
    finally:
        benchlib.stop_proc(redis_proc)
    doc = {"n": a.n, "rep": a.rep, "redis": url,
           "versions": benchlib.pkg_versions(["rq", "dramatiq", "celery", "kombu", "huey", "arq", "redis",
                                              "hiredis", "gevent"]),
           "results": results}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
