#!/usr/bin/env python
"""``async def`` tasks on the gevent worker (mrq.aio): overlap, a shared client, file descriptors, overhead.

    python bench/bench_aio.py                 # the figures of docs/performance.md ("async def tasks")
    python bench/bench_aio.py --client-jobs 2000 --noop-jobs 2000   # quick

Each trial queues its jobs, then runs one ``mrq-worker --dequeue_strategy burst`` process (it exits when the
queue is empty) against a private redis-server and SecantusDB (``mrq.servers``). Times are from the job
documents: the first ``datestarted`` to the last ``dateupdated``.

1. ``--sleep-jobs`` (1,000) jobs that each ``await asyncio.sleep(1)``, ``--greenlets 1000``.
2. ``--client-jobs`` (10,000) jobs using one asyncio client created lazily on the loop
   (``tests.tasks.aio.use_client``), ``--greenlets 100``: clients created, calls, open fds after the first
   100 jobs and at the last one.
0. In-process: the cost of handing a no-op coroutine to the loop and back (``mrq.aio.run_awaitable``).
3. ``--noop-jobs`` (10,000) no-op jobs, ``async def`` and plain, ``--greenlets 100``: jobs/s of each and the
   cost of the coroutine path per job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def trial(redis_url: str, mongo: Any, tag: str, path: str, params: list[dict[str, Any]], greenlets: int,
          workdir: str) -> dict[str, Any]:
    from mrq.context import connections, setup_context
    from mrq.indexes import ensure_indexes
    from mrq.job import queue_jobs

    mongodb = mongo.uri(tag)
    setup_context(redis=redis_url, mongodb_jobs=mongodb, redis_prefix=tag)
    db = connections.mongodb_jobs
    ensure_indexes(db)
    queue_jobs(path, params, queue="bench")
    env = dict(os.environ, MRQ_REDIS=redis_url, MRQ_MONGODB_JOBS=mongodb, MRQ_REDIS_PREFIX=tag,
               PYTHONUNBUFFERED="1", MRQ_LOG_LEVEL="WARNING")
    argv = [sys.executable, "-m", "mrq.cli", "worker", "--greenlets", str(greenlets), "--dequeue_strategy",
            "burst", "bench"]
    with open(os.path.join(workdir, f"{tag}.log"), "w") as out:
        code = subprocess.run(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1800).returncode
    docs = list(db["mrq_jobs"].find({}, {"datestarted": 1, "dateupdated": 1, "status": 1, "result": 1}))
    span = (max(d["dateupdated"] for d in docs) - min(d["datestarted"] for d in docs)).total_seconds()
    result = {"exit": code, "n": len(docs), "ok": sum(d["status"] == "success" for d in docs), "span": span,
              "rate": len(docs) / max(span, 1e-3), "docs": docs}
    connections.mongodb_jobs.client.drop_database(tag)
    connections.redis.flushdb()
    connections.reset()
    return result


def handoff_cost(n: int = 20000) -> tuple[float, float]:
    """Seconds per ``run_awaitable`` of a no-op coroutine, in this process: one greenlet after the other, and
    100 greenlets at once (what a job pays on top of its task for being a coroutine)."""
    import time

    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    import gevent
    from gevent.pool import Pool

    from mrq.aio import run_awaitable

    async def noop() -> None:
        return None

    run_awaitable(noop())  # starts the loop
    start = time.perf_counter()
    for _ in range(n):
        run_awaitable(noop())
    sequential = (time.perf_counter() - start) / n
    pool = Pool(100)
    start = time.perf_counter()
    for _ in range(n):
        pool.spawn(run_awaitable, noop())
    pool.join()
    gevent.sleep(0)
    return sequential, (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sleep-jobs", type=int, default=1000)
    parser.add_argument("--client-jobs", type=int, default=10000)
    parser.add_argument("--noop-jobs", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    seq, par = handoff_cost()
    print(f"run_awaitable of a no-op coroutine, in-process: {seq * 1e6:.1f} µs one greenlet after the other, "
          f"{par * 1e6:.1f} µs per job with 100 greenlets at once")

    from mrq.servers import MongoServer, RedisServer

    workdir = tempfile.mkdtemp(prefix="mrq-bench-aio-")
    redis_srv, mongo_srv = RedisServer(), MongoServer()
    try:
        redis_srv.start()
        mongo_srv.start()
        pid = os.getpid()
        spans = []
        for rep in range(args.repeats):
            res = trial(redis_srv.url, mongo_srv, f"aio{pid}s{rep}", "tests.tasks.aio.sleep",
                        [{"t": 1}] * args.sleep_jobs, 1000, workdir)
            spans.append(res["span"])
            log(f"sleep: {res['ok']}/{res['n']} in {res['span']:.2f} s (exit {res['exit']})")
        print(f"{args.sleep_jobs} jobs awaiting asyncio.sleep(1), --greenlets 1000: first start to last end "
              f"{statistics.median(spans):.2f} s (median of {args.repeats}; {', '.join(f'{s:.2f}' for s in spans)})")

        res = trial(redis_srv.url, mongo_srv, f"aio{pid}c", "tests.tasks.aio.use_client",
                    [{}] * args.client_jobs, 100, workdir)
        results = sorted((d["result"] for d in res["docs"] if d["status"] == "success"), key=lambda r: r["calls"])
        print(f"{args.client_jobs} jobs sharing one lazily created asyncio client, --greenlets 100: "
              f"{res['ok']}/{res['n']} success, {res['rate']:.0f} jobs/s, clients created "
              f"{sorted({r['created'] for r in results})}, calls 1..{results[-1]['calls']}, open fds "
              f"{results[min(100, len(results) - 1)]['fds']} after 100 jobs, {results[-1]['fds']} at the last")

        rates: dict[str, list[float]] = {"async def": [], "plain": []}
        for rep in range(args.repeats):  # interleaved
            for label, path in (("async def", "tests.tasks.aio.noop"), ("plain", "tests.tasks.general.noop")):
                res = trial(redis_srv.url, mongo_srv, f"aio{pid}n{rep}{label[0]}", path, [{}] * args.noop_jobs, 100,
                            workdir)
                rates[label].append(res["rate"])
                log(f"noop {label}: {res['ok']}/{res['n']}, {res['rate']:.0f} jobs/s")
        a, p = statistics.median(rates["async def"]), statistics.median(rates["plain"])
        print(f"{args.noop_jobs} no-op jobs, --greenlets 100 (median of {args.repeats}): async def {a:.0f} jobs/s, "
              f"plain {p:.0f} jobs/s: the coroutine path costs {(1 / a - 1 / p) * 1e6:+.0f} µs per job")
    finally:
        for srv in (redis_srv, mongo_srv):
            srv.kill()
            srv.cleanup()


if __name__ == "__main__":
    main()
