#!/usr/bin/env python
"""Overhead of the tracer plugins (mrq-greentrace, mrq-memtrace) on no-op jobs, in one run.

    python bench/bench_tracers.py                    # N=3000 jobs, 3 repeats, medians
    python bench/bench_tracers.py --n 500 --repeats 1

Each repeat runs, interleaved (so that a slow phase of the shared machine hits every configuration), one
``mrq-worker --dequeue_strategy burst`` process per configuration on N no-op jobs
(``mrq_bench_tasks.noop``, as bench_mrq.py) queued beforehand in a fresh database:

* 50 greenlets: no plugin; ``--plugins greentrace``; ``--plugins memtrace`` (tracemalloc mode, the one that
  works with many greenlets; default report interval, so a snapshot every 10 s);
* 1 greenlet, N/10 jobs: no plugin; ``--trace_memory`` (objgraph per job: a debugging mode).

Processing rate = jobs / (last job end - first job start), from the job documents (worker start-up
excluded). Overhead = 1 - rate with the plugin / rate without, same repeat. Also measured in-process:
the cost of one greenlet switch with and without the greentrace tracer, and the tracemalloc snapshot time
reported by the workers (``report["memtrace"]["snapshot_ms"]``).

Servers: a private redis-server and SecantusDB (``mrq.servers``), stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
TASK = "mrq_bench_tasks.noop"

CONFIGS: list[tuple[str, list[str], int, int]] = [  # name, flags, greenlets, jobs divisor
    ("none (50 greenlets)", [], 50, 1),
    ("greentrace (50 greenlets)", ["--plugins", "greentrace"], 50, 1),
    ("memtrace tracemalloc (50 greenlets)", ["--plugins", "memtrace"], 50, 1),
    ("none (1 greenlet)", [], 1, 10),
    ("memtrace --trace_memory (1 greenlet)", ["--trace_memory"], 1, 10),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def trial(redis_url: str, mongo: Any, name: str, flags: list[str], greenlets: int, n: int, tag: str,
          workdir: str) -> dict[str, Any]:
    from mrq.context import connections, setup_context
    from mrq.indexes import ensure_indexes
    from mrq.job import queue_jobs

    mongodb = mongo.uri(tag)
    setup_context(redis=redis_url, mongodb_jobs=mongodb, redis_prefix=tag)
    db = connections.mongodb_jobs
    ensure_indexes(db)
    queue_jobs(TASK, [{"x": i} for i in range(n)], queue="bench")
    env = dict(os.environ, MRQ_REDIS=redis_url, MRQ_MONGODB_JOBS=mongodb, MRQ_REDIS_PREFIX=tag,
               PYTHONUNBUFFERED="1", MRQ_LOG_LEVEL="WARNING")
    argv = [sys.executable, "-m", "mrq.cli", "worker", "--greenlets", str(greenlets), "--dequeue_strategy",
            "burst", *flags, "bench"]
    with open(os.path.join(workdir, f"{tag}.log"), "w") as out:
        code = subprocess.run(argv, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
    docs = list(db["mrq_jobs"].find({}, {"datestarted": 1, "dateupdated": 1, "status": 1}))
    ok = sum(d["status"] == "success" for d in docs)
    start = min(d["datestarted"] for d in docs)
    end = max(d["dateupdated"] for d in docs)
    report = db["mrq_workers"].find_one() or {}
    result = {"name": name, "exit": code, "ok": ok, "n": n, "rate": n / max((end - start).total_seconds(), 1e-3),
              "snapshot_ms": (report.get("memtrace") or {}).get("snapshot_ms"),
              "switches_per_job": (report.get("greentrace") or {}).get("switches", 0) / n}
    connections.mongodb_jobs.client.drop_database(tag)
    connections.redis.flushdb()
    connections.reset()
    return result


def switch_cost(switches: int = 200_000) -> tuple[float, float]:
    """Seconds per greenlet switch (two greenlets ping-ponging through the hub), without and with the tracer."""
    import gevent
    from mrq_greentrace.tracer import GreenletTracer

    def pingpong() -> float:
        def loop() -> None:
            for _ in range(switches // 4):
                gevent.sleep(0)

        t = time.perf_counter()
        gevent.joinall([gevent.spawn(loop), gevent.spawn(loop)])
        return (time.perf_counter() - t) / switches

    pingpong()
    plain = statistics.median(pingpong() for _ in range(3))
    tracer = GreenletTracer(0.1)
    tracer.install()
    try:
        traced = statistics.median(pingpong() for _ in range(3))
    finally:
        tracer.uninstall()
    return plain, traced


def perform_cost(plugins: list[str], n: int, **extra: Any) -> float:
    """Seconds per job of the kernel's job path (``Job.perform``: hooks, wrapper, task) in this process, with
    ``plugins`` enabled and started as in a worker; no server involved (a CPU measurement)."""
    import logging
    import tracemalloc
    from types import SimpleNamespace

    import gevent
    from bson import ObjectId

    from mrq.context import get_plugin_manager, setup_context
    from mrq.job import Job
    from mrq.task import task_settings

    config = setup_context(plugins=plugins, **extra)
    hook = get_plugin_manager().hook
    worker = SimpleNamespace(id=ObjectId(), config=config, log=logging.getLogger("bench"), greenlets=50)
    hook.mrq_worker_start(worker=worker)
    settings = task_settings(TASK, config)

    def run() -> float:
        t = time.perf_counter()
        for i in range(n):
            Job(None, {"path": TASK, "params": {"x": i}}).perform(settings, worker=worker)  # type: ignore[arg-type]
            gevent.sleep(0)  # each job ends with a switch in a worker (its greenlet ends)
        return (time.perf_counter() - t) / n

    try:
        return gevent.spawn(run).get()
    finally:
        hook.mrq_worker_stop(worker=worker)
        if tracemalloc.is_tracing():
            tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="jobs per run with 50 greenlets (default 3000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="", help="comma-separated indexes of the configurations to run "
                        "(default: all; 0 and 3 are the baselines)")
    args = parser.parse_args()
    if args.configs:
        CONFIGS[:] = [CONFIGS[int(i)] for i in args.configs.split(",")]

    from mrq.servers import MongoServer, RedisServer

    workdir = tempfile.mkdtemp(prefix="mrq-bench-tracers-")
    redis_srv, mongo_srv = RedisServer(), MongoServer()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in CONFIGS}
    try:
        redis_srv.start()
        mongo_srv.start()
        for rep in range(args.repeats):
            for i, (name, flags, greenlets, divisor) in enumerate(CONFIGS):
                res = trial(redis_srv.url, mongo_srv, name, flags, greenlets, max(50, args.n // divisor),
                            f"tracers{os.getpid()}r{rep}c{i}", workdir)
                results[name].append(res)
                snapshot = f", snapshot {res['snapshot_ms']} ms" if res["snapshot_ms"] else ""
                log(f"[{rep + 1}/{args.repeats}] {name}: {res['rate']:.0f} jobs/s, ok {res['ok']}/{res['n']}, "
                    f"exit {res['exit']}, switches/job {res['switches_per_job']:.1f}{snapshot}")
    finally:
        for srv in (redis_srv, mongo_srv):
            srv.kill()
            srv.cleanup()

    def rate(name: str) -> float:
        return statistics.median(r["rate"] for r in results[name])

    print(f"| configuration | jobs | jobs/s (median of {args.repeats}) | overhead |\n|---|---|---|---|")
    for name, _flags, _g, divisor in CONFIGS:
        base = "none (50 greenlets)" if "50" in name else "none (1 greenlet)"
        if base not in results or not results[base]:
            continue
        overheads = [1 - r["rate"] / b["rate"] for r, b in zip(results[name], results[base], strict=True)]
        over = "-" if name == base else f"{statistics.median(overheads) * 100:.1f}%"
        print(f"| {name} | {max(50, args.n // divisor)} | {rate(name):.0f} | {over} |")
    snaps = [r["snapshot_ms"] for r in results.get("memtrace tracemalloc (50 greenlets)", []) if r["snapshot_ms"]]
    if snaps:
        print(f"\ntracemalloc snapshot + comparison, per report interval: {statistics.median(snaps):.0f} ms "
              "(the hub is blocked meanwhile)")
    n = 20000
    perform_cost([], 2000)  # warm up
    costs = {label: statistics.median(perform_cost(plugins, n, **extra) for _ in range(3)) for label, plugins, extra in
             [("no plugin", [], {}), ("greentrace", ["greentrace"], {}),
              ("memtrace tracemalloc", ["memtrace"], {"greenlets": 50})]}
    per_job = 1 / rate("none (50 greenlets)") if results.get("none (50 greenlets)") else None
    print("\n| job path in-process (Job.perform, no-op task) | µs per job | extra vs no plugin | share of a job's time "
          "in the 50-greenlet worker |\n|---|---|---|---|")
    for label, cost in costs.items():
        extra_us = (cost - costs["no plugin"]) * 1e6
        share = f"{(cost - costs['no plugin']) / per_job * 100:.1f}%" if per_job and label != "no plugin" else "-"
        print(f"| {label} | {cost * 1e6:.1f} | {'-' if label == 'no plugin' else f'{extra_us:+.1f}'} | {share} |")
    plain, traced = switch_cost()
    print(f"\nOne greenlet switch: {plain * 1e6:.2f} µs without the greentrace tracer, {traced * 1e6:.2f} µs with it "
          f"(+{(traced - plain) * 1e6:.2f} µs per switch).")
    bad = [r for rs in results.values() for r in rs if r["ok"] != r["n"] or r["exit"] != 0]
    if bad:
        log(f"{len(bad)} run(s) did not complete every job: see the logs in {workdir}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
