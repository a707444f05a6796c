#!/usr/bin/env python
"""Memory soak: does a worker's memory stay flat over a long run?

    python bench/soak.py                       # 100,000 no-op jobs, then 20,000 jobs that log and fail
    python bench/soak.py --n 20000 --failing 5000   # shorter

One worker process (``--greenlets 50``) on private servers (redis-server, SecantusDB), regular queues. The
worker's RSS is sampled every 0.5 s; the figure is the growth after warm-up: the RSS when the last job of a
phase ended minus the RSS once the first ``--warmup`` jobs of the phase had run (imports, connection pools,
caches filled). Printed as one line per phase; ``--json PATH`` writes the samples too. Exit 1 if a phase grew
by more than ``--max-growth-mb`` (default 10).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="no-op jobs (default 100000)")
    parser.add_argument("--failing", type=int, default=20_000, help="jobs that log and fail (default 20000)")
    parser.add_argument("--warmup", type=int, default=5_000, help="jobs of each phase before the baseline")
    parser.add_argument("--greenlets", type=int, default=50)
    parser.add_argument("--max-growth-mb", type=float, default=10.0)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.n < 0 or args.failing < 0 or args.warmup <= 0 or args.greenlets <= 0:
        parser.error("job counts must be >= 0, --warmup and --greenlets positive")

    import psutil

    from mrq.servers import MongoServer, RedisServer

    redis_server, mongo_server = RedisServer(), MongoServer()
    redis_server.start()
    mongo_server.start()
    results: list[dict[str, Any]] = []
    worker = None
    try:
        from mrq.context import connections, setup_context
        from mrq.indexes import ensure_indexes
        from mrq.job import queue_jobs

        uri = mongo_server.uri("soak")
        setup_context(redis=redis_server.url, mongodb_jobs=uri)
        ensure_indexes(connections.mongodb_jobs, connections.mongodb_logs, 16 * 1024 * 1024)
        env = dict(os.environ, MRQ_REDIS=redis_server.url, MRQ_MONGODB_JOBS=uri, MRQ_LOG_LEVEL="WARNING",
                   MRQ_QUIET="1")
        worker = subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker", "--greenlets", str(args.greenlets),
                                   "default"], cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        proc = psutil.Process(worker.pid)
        jobs = connections.mongodb_jobs["mrq_jobs"]
        for name, path, count in (("no-op", "mrq_bench_tasks.noop", args.n),
                                  ("log and fail", "mrq_bench_tasks.log_and_fail", args.failing)):
            if not count:
                continue
            for start in range(0, count, 10_000):
                queue_jobs(path, [{"x": i} for i in range(start, min(count, start + 10_000))])
            t0, baseline, samples = time.time(), None, []
            while True:
                done = jobs.count_documents({"path": path, "status": {"$in": ["success", "failed"]}})
                rss = proc.memory_info().rss / 1024 / 1024
                samples.append((round(time.time() - t0, 1), done, round(rss, 1)))
                if baseline is None and done >= min(args.warmup, count):
                    baseline = rss
                if done >= count:
                    break
                time.sleep(0.5)
            growth = rss - (baseline or rss)
            results.append({"phase": name, "jobs": count, "seconds": round(time.time() - t0, 1),
                            "rss_after_warmup_mb": round(baseline or rss, 1), "rss_end_mb": round(rss, 1),
                            "growth_mb": round(growth, 1), "samples": samples})
            print(f"soak: {name}: {count} jobs in {time.time() - t0:.0f} s, RSS {baseline:.1f} MB after "
                  f"{min(args.warmup, count)} jobs -> {rss:.1f} MB at the end: {growth:+.1f} MB", flush=True)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        redis_server.kill()
        mongo_server.kill()
        redis_server.cleanup()
        mongo_server.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 1 if any(r["growth_mb"] > args.max_growth_mb for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
