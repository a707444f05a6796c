#!/usr/bin/env python
"""``make chaos``: N jobs through several worker processes while a seeded schedule of faults hits them.

    python bench/chaos.py                          # 20,000 jobs, seed 1, faults for up to 120 s
    python bench/chaos.py --n 2000 --duration 40   # the test suite's short run (about a minute)

What runs: a private ``redis-server`` **without persistence** and a SecantusDB server on free ports, ``N`` jobs
of ``chaos_tasks.record`` queued in bulk, and ``mrq-worker --processes P --greenlets G --plugins cleaning``
(children respawned by supervisord). Each execution appends a start line and an end line to a record file
(single O_APPEND writes, which survive a killed process).

The faults, drawn from ``--seed`` (same seed, same schedule), one every ``duration / events`` seconds on
average while jobs remain:

* ``kill``: SIGKILL of a worker process (a crash, the OOM killer);
* ``term``: SIGTERM of a worker process (its running jobs are interrupted and requeued);
* ``redis_loss``: Redis stopped and started again empty (a restart without persistence: every queue, delayed
  job and in-flight record is gone; the cleaning plugin rebuilds the queues from MongoDB);
* ``mongo_restart``: MongoDB stopped and started again (its data is kept);
* ``redis_freeze`` / ``mongo_freeze``: the server stopped (SIGSTOP) for 2-5 s, then continued: a stalled
  network as a worker sees it.

It ends by itself (all jobs in a final status, or ``--timeout``) and prints one line::

    chaos: jobs=20000 events=24 (kill=6 ...) lost=0 duplicate_runs=57 not_final=0 wall=158.2s

then where the duplicate runs came from (a job that ran more than once: why its earlier run did not count),
and exits with 1 if any job never ran or is not in a final status. ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

EVENTS = {"kill": 4, "term": 2, "redis_loss": 1, "mongo_restart": 1, "redis_freeze": 1, "mongo_freeze": 1}
WORKER_ENV = {"MRQ_HEARTBEAT_INTERVAL": "0.5", "MRQ_HEARTBEAT_TTL": "3", "MRQ_REPORT_INTERVAL": "2",
              "MRQ_FLUSH_INTERVAL": "0.1", "MRQ_MAX_LATENCY": "0.5", "MRQ_LOG_LEVEL": "WARNING",
              "MRQ_CLEANING_DEAD_INTERVAL": "1", "MRQ_CLEANING_LOST_INTERVAL": "3",
              "MRQ_CLEANING_STARTED_INTERVAL": "10", "MRQ_CLEANING_GRACE": "3",
              "MRQ_CLEANING_TIMEOUT_MARGIN": "10", "MRQ_DEFAULT_JOB_TIMEOUT": "30"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def worker_pids(front: int) -> list[int]:
    """The worker processes under the ``--processes`` front process (not supervisord itself)."""
    import psutil

    try:
        procs = psutil.Process(front).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            if "supervisord" not in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(out)


def final_count(uri: str, n: int) -> int | None:
    """Jobs in a final status (``None`` while MongoDB does not answer)."""
    import pymongo

    from mrq import status as st

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000,
                                                                      socketTimeoutMS=5000)
    try:
        return int(client.get_default_database()["mrq_jobs"].count_documents(
            {"status": {"$in": sorted(st.FINAL_STATUSES)}}))
    except pymongo.errors.PyMongoError:
        return None
    finally:
        client.close()


def analyse(record: str, n: int, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs per job from the record file, and why each duplicate run happened."""
    runs: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    with open(record) as f:
        for line in f:
            kind, i, pid, t = line.split()
            if kind == "S":
                runs[int(i)].append({"pid": int(pid), "start": float(t), "end": None})
            else:
                for run in reversed(runs[int(i)]):
                    if run["pid"] == int(pid) and run["end"] is None:
                        run["end"] = float(t)
                        break
    killed = {e["pid"]: e["t"] for e in events if e["kind"] == "kill"}
    termed = {e["pid"]: e["t"] for e in events if e["kind"] == "term"}
    losses = [e["t"] for e in events if e["kind"] == "redis_loss"]
    causes: collections.Counter[str] = collections.Counter()
    for job_runs in runs.values():
        for run, following in zip(job_runs, job_runs[1:], strict=False):
            pid, start, end = run["pid"], run["start"], run["end"]
            # A Redis data loss between this run and the next: the rebuild of the queues pushed it again.
            lost_meanwhile = any((end or start) - 1 <= t <= following["start"] for t in losses)
            if end is None and pid in killed:
                causes["running when its worker was SIGKILLed"] += 1
            elif end is None and pid in termed:
                causes["running when its worker was SIGTERMed (interrupted, requeued)"] += 1
            elif lost_meanwhile:
                causes["Redis lost its data meanwhile (queues rebuilt)"] += 1
            elif end is not None and pid in killed and end <= killed[pid] <= following["start"]:
                causes["finished, status not yet stored when its worker was SIGKILLed"] += 1
            else:
                causes["other (a requeue racing the job)"] += 1
    ran = sum(1 for i in range(n) if runs.get(i))
    return {"lost": n - ran, "duplicate_runs": sum(max(0, len(r) - 1) for r in runs.values()),
            "causes": dict(causes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chaos.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000, help="jobs (default 20000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults at most (default 120)")
    parser.add_argument("--events", type=int, default=0, help="faults to draw (default: one per 5 s of duration)")
    parser.add_argument("--processes", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--greenlets", type=int, default=20, help="greenlets per worker (default 20)")
    parser.add_argument("--timeout", type=float, default=0, help="give up after this many seconds "
                        "(default: duration + 600)")
    parser.add_argument("--faults", default=",".join(EVENTS), help="kinds of faults to draw from, comma-separated "
                        f"(default: all: {','.join(EVENTS)})")
    parser.add_argument("--json", default="", help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.n <= 0 or args.duration < 0 or args.processes <= 0 or args.greenlets <= 0:
        parser.error("--n, --processes and --greenlets must be positive, --duration >= 0")
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if not faults or set(faults) - set(EVENTS):
        parser.error(f"--faults: choose among {', '.join(EVENTS)}")
    timeout = args.timeout or args.duration + 600

    from mrq.servers import MongoServer, RedisServer

    rng = random.Random(args.seed)
    count = args.events or max(1, int(args.duration / 5))
    kinds = [k for k, w in EVENTS.items() if k in faults for _ in range(w)]
    schedule = sorted(rng.uniform(2, max(3.0, args.duration)) for _ in range(count))
    plan = [(t, rng.choice(kinds), rng.random(), rng.uniform(2, 5)) for t in schedule]

    workdir = tempfile.mkdtemp(prefix="mrq-chaos-")
    record = os.path.join(workdir, "record.txt")
    redis_server, mongo_server = RedisServer(persistent=False), MongoServer()
    redis_server.start()
    mongo_server.start()
    front: subprocess.Popen[bytes] | None = None
    events: list[dict[str, Any]] = []
    started = time.time()
    try:
        from mrq.context import connections, setup_context
        from mrq.indexes import ensure_indexes
        from mrq.job import queue_jobs

        uri = mongo_server.uri("chaos")
        setup_context(redis=redis_server.url, mongodb_jobs=uri)
        ensure_indexes(connections.mongodb_jobs)
        queue_jobs("chaos_tasks.record", [{"i": i} for i in range(args.n)])
        connections.reset()
        env = dict(os.environ, **WORKER_ENV, MRQ_REDIS=redis_server.url, MRQ_MONGODB_JOBS=uri,
                   MRQ_CHAOS_RECORD=record, PYTHONUNBUFFERED="1")
        with open(os.path.join(workdir, "workers.log"), "wb") as out:
            front = subprocess.Popen([sys.executable, "-m", "mrq.cli", "worker", "--processes", str(args.processes),
                                      "--greenlets", str(args.greenlets), "--plugins", "cleaning", "default"],
                                     cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = mongo_started = time.time()
        log(f"chaos: {args.n} jobs, {args.processes} x {args.greenlets} greenlets, {len(plan)} faults planned "
            f"(seed {args.seed}); logs in {workdir}")
        for at, kind, pick, pause in plan:
            while time.time() - t0 < at:
                time.sleep(0.2)
            if (final_count(uri, args.n) or 0) >= args.n:
                break
            event: dict[str, Any] = {"kind": kind, "t": time.time()}
            if kind in ("kill", "term"):
                pids = worker_pids(front.pid)
                if not pids:
                    continue
                event["pid"] = pids[int(pick * len(pids))]
                os.kill(event["pid"], signal.SIGKILL if kind == "kill" else signal.SIGTERM)
            elif kind == "redis_loss":
                redis_server.stop()
                redis_server.start()
            elif kind == "mongo_restart":
                # A graceful restart (SIGTERM): given time to shut down cleanly, as a real one would, so that the
                # test server does not lose acknowledged writes (a SIGKILL of SecantusDB loses its unflushed ones).
                t_stop = time.time()
                mongo_server.stop(timeout=120)
                event["stop_s"] = round(time.time() - t_stop, 1)
                mongo_server.start()
                mongo_started = time.time()
            else:
                server = redis_server if kind == "redis_freeze" else mongo_server
                if server is mongo_server and time.time() - mongo_started < 15:
                    continue  # SecantusDB stopped while it is still starting up may never answer again
                assert server.pid is not None
                os.kill(server.pid, signal.SIGSTOP)
                time.sleep(pause)
                os.kill(server.pid, signal.SIGCONT)
                event["seconds"] = round(pause, 1)
            events.append(event)
            log(f"chaos: {time.time() - t0:6.1f}s {kind} {event.get('pid', '')}{event.get('stop_s', '')}")
        deadline = started + timeout
        done: int | None = 0
        silent_since = None
        while time.time() < deadline:
            done = final_count(uri, args.n)
            if done is not None and done >= args.n:
                break
            if done is None:
                silent_since = silent_since or time.time()
                if time.time() - silent_since > 60:  # the test server hung (it happens to SecantusDB): restart it
                    log("chaos: MongoDB has not answered for 60 s: restarting it (a fault of the test server)")
                    events.append({"kind": "mongo_hung_restart", "t": time.time()})
                    mongo_server.stop(timeout=30)
                    mongo_server.start()
                    silent_since = None
            else:
                silent_since = None
            time.sleep(1)
        wall = time.time() - started
        if done is None or done < args.n:  # keep what tells why
            for name, server in (("redis", redis_server), ("mongodb", mongo_server)):
                with open(os.path.join(workdir, f"{name}.log"), "w") as f:
                    f.write(server.log_tail(20_000))
            log(f"chaos: not finished after {timeout:.0f} s ({'MongoDB does not answer' if done is None else done} "
                f"final); server logs kept in {workdir}")
    finally:
        if front is not None and front.poll() is None:
            front.send_signal(signal.SIGINT)
            try:
                front.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(front.pid, signal.SIGKILL)
                front.wait()
        redis_server.kill()
        mongo_server.kill()
        redis_server.cleanup()
        mongo_server.cleanup()
    figures = analyse(record, args.n, events)
    figures.update(jobs=args.n, events=len(events), not_final=args.n - (done or 0), wall_s=round(wall, 1),
                   seed=args.seed, mongodb_answered=done is not None,
                   event_counts=dict(collections.Counter(e["kind"] for e in events)))
    kinds_text = " ".join(f"{k}={v}" for k, v in sorted(figures["event_counts"].items()))
    print(f"chaos: jobs={args.n} events={len(events)} ({kinds_text}) lost={figures['lost']} "
          f"duplicate_runs={figures['duplicate_runs']} not_final={figures['not_final']} wall={wall:.1f}s")
    for cause, number in sorted(figures["causes"].items(), key=lambda c: -c[1]):
        print(f"  {number:6d}  {cause}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 1 if figures["lost"] or figures["not_final"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
