#!/usr/bin/env python
"""Where one MRQ worker process spends its CPU: N no-op jobs, regular or raw, one burst worker under a profiler.

    python bench/profile_worker.py                        # regular queue, N=5000, cProfile, top 40 by own time
    python bench/profile_worker.py --raw --n 20000        # raw queue, statuses_no_storage=("started", "success")
    python bench/profile_worker.py --py-spy --out /tmp/w.txt   # py-spy (pip install py-spy), collapsed stacks

The jobs are bulk-enqueued first, on a private redis-server and a fresh SecantusDB (``mrq.servers``), then ONE
worker ``python -m mrq.cli worker --greenlets 50 --dequeue_strategy burst`` runs them under ``cProfile`` (own time
per function, every call; gevent switches make its cumulative times unreliable) or under ``py-spy record``
(sampling, ``--rate`` Hz, ``--nonblocking``; py-spy's "raw" format: one line per distinct stack with its sample
count, which this script also sums per function, own and total). Start-up is included (imports,
``ensure_indexes``). py-spy leaves out idle samples, but counts a process waiting for a CPU as busy: on a loaded
machine, the time after a system call that wakes a server (a send on loopback) is over-counted.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_mrq import RAW_CONFIG, RAW_QUEUE, TASK  # noqa: E402


def summarize_collapsed(path: str, top: int) -> str:
    """Own and total samples per function of a py-spy ``raw`` (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    lines = [f"{samples} samples", "", "own %  total %  function (file:line)"]
    for frame, n in own.most_common(top):
        lines.append(f"{100 * n / samples:5.1f}  {100 * total[frame] / samples:6.1f}   {frame}")
    lines += ["", "total % (top by inclusive samples)"]
    for frame, n in total.most_common(top):
        lines.append(f"{100 * n / samples:6.1f}   {frame}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--greenlets", type=int, default=50)
    ap.add_argument("--raw", action="store_true", help="profile the raw fast path instead of a regular queue")
    ap.add_argument("--py-spy", action="store_true", help="sample with py-spy instead of cProfile")
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second (default 1000)")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", default="", help="keep the profile here (.prof for cProfile, collapsed text for py-spy)")
    a = ap.parse_args()
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if a.py_spy and not os.access(py_spy, os.X_OK):
        print(f"profile_worker.py: error: --py-spy needs py-spy, which is neither on PATH nor beside {sys.executable}."
              f" Install it with `{sys.executable} -m pip install py-spy` (or run without --py-spy: cProfile needs "
              "nothing).", file=sys.stderr)
        return 2

    from mrq.context import connections, setup_context
    from mrq.indexes import ensure_indexes
    from mrq.job import queue_jobs
    from mrq.raw import queue_raw_jobs
    from mrq.servers import MongoServer, RedisServer

    workdir = tempfile.mkdtemp(prefix="mrq-profile-")
    redis_srv, mongo_srv = RedisServer().start(), MongoServer().start()
    try:
        config = os.path.join(workdir, "raw-config.py")
        with open(config, "w") as f:
            f.write(RAW_CONFIG)
        setup_context(redis=redis_srv.url, mongodb_jobs=mongo_srv.uri("profile"))
        ensure_indexes(connections.mongodb_jobs)
        if a.raw:
            queue_raw_jobs(RAW_QUEUE, range(a.n))
        else:
            queue_jobs(TASK, [{"x": i} for i in range(a.n)])
        worker = ["-m", "mrq.cli", "worker", "--greenlets", str(a.greenlets), "--dequeue_strategy", "burst",
                  "--config", config, RAW_QUEUE if a.raw else "default"]
        out = a.out or os.path.join(workdir, "profile.txt" if a.py_spy else "profile.prof")
        if a.py_spy:
            argv = [py_spy, "record", "--format", "raw", "--rate", str(a.rate), "--nonblocking", "-o", out, "--",
                    sys.executable, *worker]
        else:
            argv = [sys.executable, "-m", "cProfile", "-o", out, *worker]
        env = dict(os.environ, MRQ_REDIS=redis_srv.url, MRQ_MONGODB_JOBS=mongo_srv.uri("profile"),
                   MRQ_LOG_LEVEL="WARNING")
        t = time.time()
        rc = subprocess.call(argv, cwd=HERE, env=env, stdout=subprocess.DEVNULL)
        elapsed = time.time() - t
        print(f"{'raw' if a.raw else 'regular'} N={a.n}: worker exit {rc}, {elapsed:.1f} s (profiler overhead "
              f"included); profile in {out}\n")
        if a.py_spy:
            print(summarize_collapsed(out, a.top))
        else:
            pstats.Stats(out).sort_stats("tottime").print_stats(a.top)
        return rc
    finally:
        connections.reset()
        redis_srv.cleanup()
        mongo_srv.cleanup()
        if not a.out:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
