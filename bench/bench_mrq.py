#!/usr/bin/env python
"""MRQ on this machine, regular and raw queues, next to the MongoDB server's ceiling and (``--peers``) to RQ,
Dramatiq, Celery, Huey and arq, all measured in the same run.

    python bench/bench_mrq.py                       # N=5000, 3 repeats, median of each metric
    python bench/bench_mrq.py --n 500 --repeats 1   # quick mode (about a minute)
    python bench/bench_mrq.py --peers               # + the peers, interleaved with MRQ (11-13 min)

Every job is the peers' job: it takes an int, returns it + 1 and appends ``"<arg> <start> <end>"`` to a stamp
file in one ``O_APPEND`` write (``mrq_bench_tasks.py``, as ``../shared/bench/apps/bench_common.py``). **Processing
rate = N / (last job end - first job start)** from the stamps, as in ``../shared/bench/peers_bench.py``: worker
start-up excluded; every argument must have run exactly once (else the run counts as failed).

Each repeat:

1. **MRQ regular** (queue ``default``, task ``mrq_bench_tasks.noop``): bulk enqueue, ``queue_jobs`` of N jobs
   (chunks of 1000: one ``insert_many`` + one Redis MULTI each), timed after an untimed 100-job warm-up, thrown
   away; one-by-one enqueue, N x ``queue_job``, timed: these jobs are processed by ONE worker process,
   ``python -m mrq.cli worker --greenlets G --dequeue_strategy burst default`` (cwd ``bench/``), started after
   the enqueue, which exits when the queue is empty. Also: every job document in ``success`` with result arg+1;
   "to last status stored" = N / (first job start -> first 20 ms poll that sees the queue and MRQ's in-flight
   hash in Redis both empty: a job is acknowledged only after its status write).
2. **MRQ raw** (queue ``bench_raw``, a Redis list; ``RAW_QUEUES`` written to a temp config file: ``job_factory``
   turns the payload into ``mrq_bench_tasks.noop(x=int(payload))``, ``statuses_no_storage = ("started",
   "success")``): bulk enqueue ``queue_raw_jobs`` in chunks of 1000 payloads, one-by-one enqueue (one call per
   payload), the worker with ``--config`` that file. Nothing may be written to ``mrq_jobs`` (no failure).
   ``--raw-n`` jobs (default 4 x N: a processing window about as long as the fastest peer's at N).
3. **Worker CPU per job**, for both: ``os.wait4`` gives the worker's CPU (user + system) of the whole run; the
   same command run just before on the same, empty queue gives the fixed cost (imports, connections, indexes,
   first and last report: ~0.4 s); CPU per job = (run - empty run) / N. A second estimate, the one used for the
   peers, reads the worker's CPU in ``/proc`` every 20 ms and interpolates it at the first job start and the last
   job end ("window"); it leaves out the status writes still pending after the last job.
   **Round trips per job** = the ``redis_roundtrips`` / ``mongodb_roundtrips`` counters of the worker's final
   report in ``mrq_workers`` / N (the whole run, start-up included). **Loaded RSS** = peak RSS of the worker's
   process tree, 20 ms samples (as the peers harness).
4. **MongoDB ceiling**: a plain pymongo client on a collection with MRQ's indexes and min(N, 2000) job-like
   documents: ``insert_many``, ``bulk_write`` of ``UpdateOne`` by ``_id`` (the status writer's kind of write) in
   batches of 100 and 1000, ``find`` by ``_id $in`` in batches of G (the worker's fetch).
5. **I/O-bound**: ``--io-n`` jobs of ``gevent.sleep(0.1)`` at G greenlets, bulk-enqueued, regular and raw; rate
   from the stamps as a fraction of the ceiling G / 0.1 s.
6. **Latency** and **idle RSS**: one worker (not burst) on an empty regular and raw queue; its RSS once stable
   (1% over 1 s, at least 3 s after start) is the idle RSS; after one warm-up job of each kind, ``--latency-n``
   jobs enqueued one at a time, 20-30 ms apart, regular then raw: latency = job start (stamp) - return of the
   enqueue call; p50 and p99.
7. **Plugins overhead**: the regular run (bulk-enqueued) without plugins and with five no-op plugins
   (``--plugins mrq_bench_plugins:noop1,...``, every per-job hook), each on a fresh SecantusDB, in alternating
   order; and the same pair on the raw queue. Overhead = 1 - rate with / rate without (paired, per repeat), and
   the extra CPU per job x the rate without plugins (the share of a job's time they take: what the target is
   judged on, as two identical SecantusDB-bound runs differ by up to 20%).
8. With ``--peers``: ``peers_adapter.py`` under the peers' venv (/tmp/benchenv, made by
   ``../shared/bench/setup.sh`` if missing) runs ``peers_bench.run_trial`` unchanged for each config, adding
   the worker's CPU between first job start and last job end, and the idle RSS of each worker started with no
   job. MRQ and the peers alternate on the machine, repeat after repeat.

Servers: a private ``redis-server`` (``mrq.servers.RedisServer``) and SecantusDB (``mrq.servers.MongoServer``:
a fresh one per repeat unless ``--same-mongodb``, and for each plugins run: it slows down as data is written to
it) on free ports, stopped at the end; or ``--redis URL --mongodb URI`` (nothing is flushed there: MRQ uses a key
prefix and databases of its own, deleted after). Results: JSON in ``--out`` (default /tmp/mrq-bench.json) and
markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from benchproc import ProcSampler, count_stamps, percentile, read_stamps, stamp_window  # noqa: E402
from mrq_bench_plugins import NAMES as PLUGIN_NAMES  # noqa: E402

PEERS_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
PEERS_PYTHON = "/tmp/benchenv/bin/python"
DEFAULT_PEERS = "rq-simple,huey-thread-w1,dramatiq-p1-t8,celery-prefork-c1,arq-poll10ms"
TASK, IO_TASK = "mrq_bench_tasks.noop", "mrq_bench_tasks.sleep"
QUEUE, RAW_QUEUE, IO_QUEUE, IO_RAW_QUEUE = "default", "bench_raw", "io", "io_raw"
LAT_QUEUE, LAT_RAW_QUEUE = "lat", "lat_raw"
IO_SLEEP = 0.1
RAW_CONFIG = f'''# RAW_QUEUES of bench_mrq.py (written to a temp file, given to the worker with --config)
RAW_QUEUES = {{
    name: {{"job_factory": (lambda task: lambda payload: {{"path": task, "params": {{"x": int(payload)}}}})(task),
            "statuses_no_storage": ("started", "success")}}
    for name, task in (("{RAW_QUEUE}", "{TASK}"), ("{LAT_RAW_QUEUE}", "{TASK}"), ("{IO_RAW_QUEUE}", "{IO_TASK}"))
}}
'''

RUN_METRICS = [
    "enqueue_one_per_s", "enqueue_bulk_per_s", "rate_per_s", "process_per_s", "process_stored_per_s", "cpu_us_per_job",
    "cpu_window_us_per_job", "startup_cpu_s", "redis_roundtrips_per_job", "mongodb_roundtrips_per_job",
    "redis_roundtrips_per_job_net", "peak_rss_mb", "worker_startup_s", "jobs_lost", "peak_inflight",
]
CEILING_METRICS = ["insert_many_docs_per_s", "bulk_write_100_docs_per_s", "bulk_write_1000_docs_per_s",
                   "find_in_docs_per_s", "find_plus_bulk100_jobs_per_s"]
IO_METRICS = ["process_per_s", "fraction_of_ceiling"]
LATENCY_METRICS = ["idle_rss_mb", "idle_cpu_pct", "regular_p50_ms", "regular_p99_ms", "regular_max_ms",
                   "raw_p50_ms", "raw_p99_ms", "raw_max_ms", "regular_enqueue_call_p50_ms",
                   "raw_enqueue_call_p50_ms"]
PLUGIN_METRICS = ["rate_per_s_none", "rate_per_s_five", "overhead", "cpu_us_per_job_none",
                  "cpu_us_per_job_five", "cpu_us_per_job_extra", "overhead_cpu_estimate"]
PEER_METRICS = ["enqueue_one_per_s", "enqueue_bulk_per_s", "process_per_s", "cpu_us_per_job", "peak_rss_tree_mb",
                "idle_rss_mb", "total_wall_s"]


_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def median(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def medians(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, float | None]:
    return {k: median([r.get(k) for r in runs]) for k in keys}


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
# Servers and MRQ context
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

        from mrq.context import connections

        connections.reset()
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


class Servers:
    """The Redis and SecantusDB servers of the run (or the external ones of ``--redis``/``--mongodb``)."""

    def __init__(self, redis_url: str | None, mongodb_uri: str | None) -> None:
        self.external = bool(redis_url)
        self._owned: list[Any] = []
        self._mongo: Any = None
        if redis_url:
            self.target = Target(redis_url, mongodb_uri or "")
            self.mongodb_server = "external: " + (mongodb_uri or "")
            return
        from mrq.servers import RedisServer

        log("starting redis-server on a free port...")
        redis_srv = RedisServer()
        self._owned.append(redis_srv)
        redis_srv.start()
        self.target = Target(redis_srv.url, "")
        self.mongodb_server = f"SecantusDB {version('SecantusDB') or version('secantusdb')}, fresh per repeat"

    def fresh_mongodb(self) -> Target:
        """A fresh SecantusDB for what follows (the previous one is stopped); external servers: unchanged."""
        if self.external:
            return self.target
        from mrq.servers import MongoServer

        if self._mongo is not None:
            self._mongo.cleanup()
            self._owned.remove(self._mongo)
        self._mongo = MongoServer()
        self._owned.append(self._mongo)
        self._mongo.start()
        self.target.mongodb_uri = self._mongo.url
        return self.target

    def cleanup(self) -> None:
        for server in self._owned:
            server.cleanup()


# ---------------------------------------------------------------------------------------------------
# One MRQ worker run
# ---------------------------------------------------------------------------------------------------


class WorkerRun:
    """``python -m mrq.cli worker`` as a child process, sampled every 20 ms until it exits."""

    def __init__(self, target: Target, dbname: str, prefix: str, queues: list[str], greenlets: int, workdir: str,
                 label: str, stamp_file: str | None = None, burst: bool = True, config: str | None = None,
                 plugins: list[str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "mrq.cli", "worker", "--greenlets", str(greenlets)]
        if burst:
            self.argv += ["--dequeue_strategy", "burst"]
        if config:
            self.argv += ["--config", config]
        if plugins:
            self.argv += ["--plugins", ",".join(plugins)]
        self.argv += queues
        self.env = dict(os.environ, MRQ_REDIS=target.redis_url, MRQ_MONGODB_JOBS=target.uri(dbname),
                        MRQ_REDIS_PREFIX=prefix, PYTHONUNBUFFERED="1", BENCH_STAMP_FILE=stamp_file or "")
        self.log_path = os.path.join(workdir, f"worker-{label}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: ProcSampler | None = None
        self.cpu_s: float | None = None
        self.returncode: int | None = None
        self.t_spawn = self.t_exit = 0.0

    @property
    def cmd(self) -> str:
        return "python " + " ".join(self.argv[1:])

    def start(self) -> WorkerRun:
        with open(self.log_path, "w") as worker_log:
            self.t_spawn = time.time()
            self.proc = subprocess.Popen(self.argv, cwd=HERE, env=self.env, stdout=worker_log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.sampler = ProcSampler(self.proc.pid)
        return self

    def poll(self) -> bool:
        """Sample; True once the worker has exited (its rusage is then in ``cpu_s``)."""
        assert self.proc is not None and self.sampler is not None
        if self.returncode is not None:
            return True
        self.sampler.sample()
        pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.t_exit = time.time()
        self.returncode = self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = rusage.ru_utime + rusage.ru_stime
        return True

    def wait(self, timeout: float, every: float = 0.02, also: Callable[[], None] | None = None) -> None:
        """Sample until the worker exits; after ``timeout`` s, SIGINT (graceful), then SIGKILL of its group."""
        deadline = time.monotonic() + timeout
        while not self.poll():
            if also is not None:
                also()
            if time.monotonic() > deadline:
                self.stop()
                return
            time.sleep(every)

    def stop(self, grace: float = 30.0) -> None:
        """SIGINT (stop dequeuing, finish, exit 0); SIGKILL of the process group after ``grace`` s."""
        assert self.proc is not None
        if self.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace
        while not self.poll():
            if time.monotonic() > deadline:
                os.killpg(self.proc.pid, signal.SIGKILL)
            time.sleep(0.05)

    def log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-2000:]


def worker_report(db: Any, pid: int) -> dict[str, Any]:
    return db["mrq_workers"].find_one({"pid": pid}, sort=[("datereported", -1)]) or {}


# ---------------------------------------------------------------------------------------------------
# MRQ phases
# ---------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, servers: Servers, workdir: str) -> None:
        self.args = args
        self.servers = servers
        self.workdir = workdir
        self.raw_config = os.path.join(workdir, "raw-config.py")
        with open(self.raw_config, "w") as f:
            f.write(RAW_CONFIG)
        self.tag = f"mrqbench{os.getpid()}"

    # -- enqueue helpers (each runs with the MRQ context pointed at the phase's database)
    def _bulk_enqueue_timed(self, target: Target, raw: bool, n: int, rep: int) -> float:
        """Bulk enqueue of N jobs in chunks of 1000, after an untimed 100-job warm-up; the jobs are thrown away."""
        from mrq.indexes import ensure_indexes
        from mrq.job import queue_jobs
        from mrq.raw import queue_raw_jobs

        name = f"{self.tag}r{rep}{'w' if raw else 'b'}"
        for timed in (False, True):
            db, broker = target.use(name, name)
            ensure_indexes(db)  # the worker creates them too; enqueue pays for them in production
            broker.redis.ping()  # connections made before the clock starts
            count = n if timed else min(100, n)
            t = time.perf_counter()
            for start in range(0, count, 1000):
                if raw:
                    queue_raw_jobs(RAW_QUEUE, range(start, min(count, start + 1000)))
                else:
                    queue_jobs(TASK, [{"x": i} for i in range(start, min(count, start + 1000))], queue=QUEUE)
            elapsed = time.perf_counter() - t
            target.drop(name, name)
        return n / elapsed

    def processing_run(self, target: Target, rep: int, label: str, *, raw: bool, n: int,
                       enqueue: str = "one", task: str = TASK, plugins: list[str] | None = None,
                       empty_run: bool = True, check_stored: bool = True) -> dict[str, Any]:
        """Enqueue N jobs (``one`` by one, timed, or ``bulk``), then one burst worker processes them."""
        from mrq.indexes import ensure_indexes
        from mrq.job import queue_job, queue_jobs
        from mrq.raw import queue_raw_jobs

        args = self.args
        dbname = prefix = f"{self.tag}r{rep}{label}"
        if raw:
            queue = RAW_QUEUE if task == TASK else IO_RAW_QUEUE
        else:
            queue = QUEUE if task == TASK else IO_QUEUE
        out: dict[str, Any] = {"repeat": rep, "n": n, "greenlets": args.greenlets, "queue": queue, "ok": False,
                               "plugins": plugins or []}
        db, broker = target.use(dbname, prefix)
        ensure_indexes(db)
        stamp_file = os.path.join(self.workdir, f"stamps-{label}-{rep}.txt")

        def worker() -> WorkerRun:
            return WorkerRun(target, dbname, prefix, [queue], args.greenlets, self.workdir, f"{label}-{rep}",
                             stamp_file=stamp_file, config=self.raw_config if raw else None, plugins=plugins)

        if empty_run:  # the fixed cost of the same command: start-up, empty dequeue, shut-down
            empty = worker().start()
            empty.wait(60)
            report = worker_report(db, empty.proc.pid if empty.proc else 0)
            counters = report.get("counters") or {}
            out["startup_cpu_s"] = empty.cpu_s
            out["startup_redis_roundtrips"] = counters.get("redis_roundtrips")
            out["startup_mongodb_roundtrips"] = counters.get("mongodb_roundtrips")
            out["empty_run_wall_s"] = empty.t_exit - empty.t_spawn

        # warm-up of this process's connections, not timed
        if raw:
            queue_raw_jobs(queue, ["-1"])
        else:
            queue_job(task, {"x": -1}, queue=queue)
            db["mrq_jobs"].delete_many({})
        broker.redis.delete(broker.queue_key(queue))
        t_enq0 = time.time()
        if enqueue == "one":
            if raw:
                for i in range(n):
                    queue_raw_jobs(queue, [str(i)])
            else:
                for i in range(n):
                    queue_job(task, {"x": i}, queue=queue)
        else:
            for start in range(0, n, 1000):
                chunk = range(start, min(n, start + 1000))
                if raw:
                    queue_raw_jobs(queue, chunk)
                else:
                    queue_jobs(task, [{"x": i} for i in chunk], queue=queue)
        out[f"enqueue_{enqueue}_per_s"] = n / (time.time() - t_enq0)

        run = worker().start()
        out["worker_cmd"] = run.cmd.replace(self.raw_config, "raw-config.py")
        state: dict[str, Any] = {"t_stored": None, "peak_inflight": 0}

        def watch_redis() -> None:
            if state["t_stored"] is None:  # a job leaves the in-flight hash once its status is stored
                pipe = broker.redis.pipeline(transaction=False)
                pipe.llen(broker.queue_key(queue))
                pipe.hlen(broker.inflight_key)
                waiting, inflight = pipe.execute()
                state["peak_inflight"] = max(state["peak_inflight"], inflight)
                if waiting == 0 and inflight == 0:
                    state["t_stored"] = time.time()

        run.wait(args.timeout, also=watch_redis)
        assert run.sampler is not None and run.proc is not None
        out["worker_rc"] = run.returncode
        out["peak_rss_mb"] = run.sampler.peak_rss / 1024 / 1024
        out["peak_inflight"] = state["peak_inflight"]
        window = stamp_window(read_stamps(stamp_file), range(n))
        out.update({k: v for k, v in window.items() if k not in ("first_start", "last_end")})
        if "first_start" in window:
            first, last = window["first_start"], window["last_end"]
            out["worker_startup_s"] = first - run.t_spawn
            stored = state["t_stored"] or run.t_exit
            out["process_stored_per_s"] = n / (stored - first) if stored > first else None
            cpu_window = run.sampler.cpu_between(first, last)
            out["cpu_window_us_per_job"] = cpu_window / n * 1e6 if cpu_window is not None else None
        out["rate_per_s"] = out.get("process_per_s") if raw else out.get("process_stored_per_s")
        out["cpu_s"] = run.cpu_s
        if run.cpu_s is not None and out.get("startup_cpu_s") is not None:
            out["cpu_us_per_job"] = (run.cpu_s - out["startup_cpu_s"]) / n * 1e6
        out["process_wall_per_s"] = n / (run.t_exit - run.t_spawn) if run.t_exit > run.t_spawn else None
        report = worker_report(db, run.proc.pid)
        counters = report.get("counters") or {}
        out["worker_report_status"] = report.get("status")
        out["worker_counters"] = counters
        if counters:
            out["redis_roundtrips_per_job"] = counters.get("redis_roundtrips", 0) / n
            out["mongodb_roundtrips_per_job"] = counters.get("mongodb_roundtrips", 0) / n
            if out.get("startup_redis_roundtrips") is not None:
                out["redis_roundtrips_per_job_net"] = (counters.get("redis_roundtrips", 0)
                                                       - out["startup_redis_roundtrips"]) / n
        if raw:  # nothing stored: no failure
            out["docs_stored"] = db["mrq_jobs"].count_documents({})
            stored_ok = out["docs_stored"] == 0
        elif check_stored:
            ok_docs = 0
            for doc in db["mrq_jobs"].find({"queue": queue}, {"status": 1, "params": 1, "result": 1}):
                if doc.get("status") == "success" and doc.get("result") == (doc.get("params") or {}).get("x", -2) + 1:
                    ok_docs += 1
            out["docs_success"] = ok_docs
            stored_ok = ok_docs == n
        else:
            stored_ok = True
        out["ok"] = (run.returncode == 0 and out.get("jobs_lost") == 0 and out.get("jobs_duplicated") == 0
                     and stored_ok and report.get("status") == "stop")
        if not out["ok"]:
            out["worker_log_tail"] = run.log_tail()
        target.drop(dbname, prefix)
        return out

    def regular(self, target: Target, rep: int) -> dict[str, Any]:
        bulk = self._bulk_enqueue_timed(target, False, self.args.n, rep)
        out = self.processing_run(target, rep, "regular", raw=False, n=self.args.n)
        out["enqueue_bulk_per_s"] = bulk
        return out

    def raw(self, target: Target, rep: int) -> dict[str, Any]:
        bulk = self._bulk_enqueue_timed(target, True, self.args.raw_n, rep)
        out = self.processing_run(target, rep, "raw", raw=True, n=self.args.raw_n)
        out["enqueue_bulk_per_s"] = bulk
        return out

    def io_bound(self, target: Target, rep: int) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.args.io_n, "greenlets": self.args.greenlets, "sleep_s": IO_SLEEP,
                               "ceiling_per_s": self.args.greenlets / IO_SLEEP}
        for kind in ("regular", "raw"):
            res = self.processing_run(target, rep, f"io{kind}", raw=kind == "raw", n=self.args.io_n, enqueue="bulk",
                                      task=IO_TASK, empty_run=False, check_stored=False)
            res["fraction_of_ceiling"] = (res["process_per_s"] / out["ceiling_per_s"]
                                          if res.get("process_per_s") else None)
            out[kind] = res
        return out

    def latency(self, target: Target, rep: int) -> dict[str, Any]:
        """Idle RSS of a worker with nothing to do, then enqueue-to-start latency, regular and raw."""
        from mrq.indexes import ensure_indexes
        from mrq.job import queue_job
        from mrq.raw import queue_raw_jobs

        args = self.args
        dbname = prefix = f"{self.tag}r{rep}lat"
        db, _ = target.use(dbname, prefix)
        ensure_indexes(db)
        stamp_file = os.path.join(self.workdir, f"stamps-latency-{rep}.txt")
        run = WorkerRun(target, dbname, prefix, [LAT_QUEUE, LAT_RAW_QUEUE], args.greenlets, self.workdir,
                        f"latency-{rep}", stamp_file=stamp_file, burst=False, config=self.raw_config).start()
        out: dict[str, Any] = {"n": args.latency_n, "ok": False}
        assert run.sampler is not None
        try:
            rss = run.sampler.wait_idle(min_s=3.0, stable_s=1.0, max_s=10.0, alive=lambda: not run.poll())
            now = run.sampler.samples[-1][0]
            idle_cpu = run.sampler.cpu_between(now - 2.0, now)
            out["idle_rss_mb"] = rss / 1024 / 1024
            out["idle_cpu_pct"] = idle_cpu / 2.0 * 100 if idle_cpu is not None else None

            def enqueue(kind: str, x: int) -> tuple[float, float]:
                t0 = time.time()
                if kind == "raw":
                    queue_raw_jobs(LAT_RAW_QUEUE, [str(x)])
                else:
                    queue_job(TASK, {"x": x}, queue=LAT_QUEUE)
                return t0, time.time()

            rng = random.Random(rep)
            sent: dict[int, tuple[str, float, float]] = {}
            for kind, base in (("regular", 0), ("raw", 100_000)):
                enqueue(kind, base - 1)  # warm-up: the task's import, first-use costs
                deadline = time.time() + 10
                while count_stamps(stamp_file) < (1 if kind == "regular" else args.latency_n + 2) \
                        and time.time() < deadline:
                    time.sleep(0.01)
                for i in range(args.latency_n):
                    sent[base + i] = (kind, *enqueue(kind, base + i))
                    time.sleep(0.02 + rng.random() * 0.01)  # the worker is idle again before the next one
            time.sleep(0.3)
            started = {x: s for x, s, _ in read_stamps(stamp_file)}
            for kind in ("regular", "raw"):
                lat = [(started[x] - t1) * 1000 for x, (k, _, t1) in sent.items() if k == kind and x in started]
                calls = [(t1 - t0) * 1000 for k, t0, t1 in sent.values() if k == kind]
                out[f"{kind}_jobs_started"] = len(lat)
                out[f"{kind}_p50_ms"] = percentile(lat, 0.5)
                out[f"{kind}_p99_ms"] = percentile(lat, 0.99)
                out[f"{kind}_max_ms"] = max(lat) if lat else None
                out[f"{kind}_enqueue_call_p50_ms"] = percentile(calls, 0.5)
            out["ok"] = all(out[f"{k}_jobs_started"] == args.latency_n for k in ("regular", "raw"))
        finally:
            run.stop()
        out["worker_rc"] = run.returncode
        if not out["ok"]:
            out["worker_log_tail"] = run.log_tail()
        target.drop(dbname, prefix)
        return out

    def plugins(self, rep: int) -> dict[str, Any]:
        """The same run without and with five no-op plugins: regular (each on a fresh SecantusDB) and raw."""
        out: dict[str, Any] = {"plugins": PLUGIN_NAMES}
        order = [("none", None), ("five", PLUGIN_NAMES)]
        if rep % 2 == 0:
            order.reverse()  # alternate, so that neither always runs first
        for kind in ("regular", "raw"):
            res: dict[str, Any] = {}
            for variant, plugins in order:
                fresh = kind == "regular" and not self.args.same_mongodb
                target = self.servers.fresh_mongodb() if fresh else self.servers.target
                res[variant] = self.processing_run(target, rep, f"plug{kind}{variant}", raw=kind == "raw",
                                                   n=self.args.n if kind == "regular" else self.args.raw_n,
                                                   enqueue="bulk", plugins=plugins)
            none, five = res["none"], res["five"]
            summary: dict[str, Any] = {"ok": none["ok"] and five["ok"], "order": [v for v, _ in order]}
            for key in ("rate_per_s", "cpu_us_per_job"):
                summary[f"{key}_none"], summary[f"{key}_five"] = none.get(key), five.get(key)
            if none.get("rate_per_s") and five.get("rate_per_s"):
                summary["overhead"] = 1 - five["rate_per_s"] / none["rate_per_s"]
            if none.get("cpu_us_per_job") is not None and five.get("cpu_us_per_job") is not None:
                summary["cpu_us_per_job_extra"] = five["cpu_us_per_job"] - none["cpu_us_per_job"]
                if none.get("rate_per_s"):  # the share of a job's time the extra CPU takes at the measured rate
                    summary["overhead_cpu_estimate"] = summary["cpu_us_per_job_extra"] * none["rate_per_s"] / 1e6
            summary["runs"] = res
            out[kind] = summary
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
# Peers (../shared/bench/peers_bench.py through bench/peers_adapter.py, their own venv and Redis)
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
    argv = [python, os.path.join(HERE, "peers_adapter.py"), "--peers-dir", peers_dir, "--only", configs,
            "--n", str(n), "--rep", str(rep), "--out", out_path, "--workdir", os.path.join(workdir, "peers-work")]
    log("peers: " + " ".join(argv))
    rc = subprocess.call(argv, cwd=workdir, stdout=sys.stderr)
    if rc != 0 or not os.path.exists(out_path):
        log(f"peers_adapter.py failed (exit {rc})")
        return {}
    with open(out_path) as f:
        return json.load(f)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if a and b else "n/a"


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def markdown(doc: dict[str, Any]) -> str:
    mrq, reps = doc["mrq"], doc["repeats"]
    reg, raw = mrq["regular"]["median"], mrq["raw"]["median"]
    lat, io, plug = mrq["latency"]["median"], mrq["io_bound"], mrq["plugins"]
    ceil = doc["mongodb_ceiling"]["median"]
    peers = doc.get("peers") or {}
    g = doc["greenlets"]
    lines = [f"### Throughput, one worker process, no-op jobs (N = {doc['n']}, raw N = {doc['raw_n']}), "
             f"median of {reps} run(s)", "",
             "| system | worker | enqueue 1-by-1 /s | enqueue bulk /s | **process jobs/s** | MRQ raw ÷ this | "
             "MRQ regular ÷ this | worker CPU µs/job | round trips/job (Redis / MongoDB) | idle RSS MB | "
             "loaded RSS MB | ok runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, m, key in (("**MRQ regular**", reg, "regular"), ("**MRQ raw** (no storage)", raw, "raw")):
        lines.append(
            f"| {label} | 1 process x {g} greenlets | {fmt(m['enqueue_one_per_s'])} | {fmt(m['enqueue_bulk_per_s'])} | "
            f"**{fmt(m['rate_per_s'])}** | {ratio(raw['rate_per_s'], m['rate_per_s'])} | "
            f"{ratio(reg['rate_per_s'], m['rate_per_s'])} | {fmt(m['cpu_us_per_job'])} | "
            f"{fmt(m['redis_roundtrips_per_job'], 3)} / {fmt(m['mongodb_roundtrips_per_job'], 3)} | "
            f"{fmt(lat['idle_rss_mb'], 1)} | {fmt(m['peak_rss_mb'], 1)} | {mrq[key]['ok_runs']}/{reps} |")
    for name, p in peers.items():
        pm = p["median"]
        lines.append(
            f"| `{name}` | {p['concurrency']} | {fmt(pm['enqueue_one_per_s'])} | {fmt(pm['enqueue_bulk_per_s'])} | "
            f"**{fmt(pm['process_per_s'])}** | {ratio(raw['rate_per_s'], pm['process_per_s'])} | "
            f"{ratio(reg['rate_per_s'], pm['process_per_s'])} | {fmt(pm['cpu_us_per_job'])} | n/a | "
            f"{fmt(pm['idle_rss_mb'], 1)} | {fmt(pm['peak_rss_tree_mb'], 1)} | {p['ok_runs']}/{p['runs']} |")

    best = max(peers.items(), key=lambda kv: kv[1]["median"]["process_per_s"] or 0, default=None)
    best_bulk = max(peers.items(), key=lambda kv: kv[1]["median"]["enqueue_bulk_per_s"] or 0, default=None)
    best_rate = best[1]["median"]["process_per_s"] if best else None
    best_bulk_rate = best_bulk[1]["median"]["enqueue_bulk_per_s"] if best_bulk else None
    ceiling = ceil["bulk_write_100_docs_per_s"]
    io_reg, io_raw = io["regular"]["median"], io["raw"]["median"]
    preg = plug["regular"]["median"]

    def lat_cell(kind: str) -> str:
        return (f"p50 {fmt(lat[f'{kind}_p50_ms'], 2)} ms, p99 {fmt(lat[f'{kind}_p99_ms'], 2)} ms, "
                f"max {fmt(lat[f'{kind}_max_ms'], 1)} ms")

    def plug_cell(kind: str) -> str:
        m = plug[kind]["median"]
        per_repeat = ", ".join(pct(r[kind].get("overhead"), 0) for r in plug["runs"])
        return (f"{fmt(m['rate_per_s_none'])} → {fmt(m['rate_per_s_five'])} jobs/s (paired, per repeat: "
                f"{per_repeat} slower; median {pct(m['overhead'])}); CPU {fmt(m['cpu_us_per_job_none'])} → "
                f"{fmt(m['cpu_us_per_job_five'])} µs/job (median of the differences: {fmt(m['cpu_us_per_job_extra'])})"
                f" = {pct(m['overhead_cpu_estimate'])} of a job's time at {fmt(m['rate_per_s_none'])} jobs/s")

    def ok(value: float | None, limit: float, above: bool = False) -> bool | None:
        return None if value is None else (value >= limit if above else value < limit)

    lines += ["", f"### MRQ: other measures, targets of issue 10 (median of {reps})", "",
              "| measure | MRQ | target | met |", "|---|---|---|---|"]
    raw_vs_best = raw["rate_per_s"] / best_rate if best_rate and raw["rate_per_s"] else None
    bulk_vs_best = raw["enqueue_bulk_per_s"] / best_bulk_rate if best_bulk_rate and raw["enqueue_bulk_per_s"] else None
    lines += [
        f"| raw processing ÷ best peer ({best[0] if best else 'n/a'}) | {ratio(raw['rate_per_s'], best_rate)}x "
        f"| ≥ 1.5x | {met(ok(raw_vs_best, 1.5, True))} |",
        f"| raw bulk enqueue ÷ fastest peer bulk ({best_bulk[0] if best_bulk else 'n/a'}) | "
        f"{ratio(raw['enqueue_bulk_per_s'], best_bulk_rate)}x | ≥ 1x | "
        f"{met(ok(bulk_vs_best, 1.0, True))} |",
        f"| raw: Redis round trips per job | {fmt(raw['redis_roundtrips_per_job'], 3)} | ≤ 0.05 | "
        f"{met(ok(raw['redis_roundtrips_per_job'], 0.0501))} |",
        f"| raw: worker CPU per job (window method in parentheses) | {fmt(raw['cpu_us_per_job'])} µs "
        f"({fmt(raw['cpu_window_us_per_job'])}) | - | - |",
        f"| regular: worker CPU per job (window method in parentheses) | {fmt(reg['cpu_us_per_job'])} µs "
        f"({fmt(reg['cpu_window_us_per_job'])}) | < 200 µs | {met(ok(reg['cpu_us_per_job'], 200))} |",
        f"| regular: worker start-up CPU (empty queue, whole process) | {fmt(reg['startup_cpu_s'], 2)} s | - | - |",
        f"| regular: job bodies only (first start → last end, the peers' exact method; statuses still pending) | "
        f"{fmt(reg['process_per_s'])} jobs/s | - | - |",
        f"| raw: to the last acknowledgement in Redis (in-flight hash empty, 20 ms polls) | "
        f"{fmt(raw['process_stored_per_s'])} jobs/s | - | - |",
        f"| MongoDB ceiling: `bulk_write` of 100 `UpdateOne` by `_id` | {fmt(ceiling)} docs/s; MRQ regular to last "
        f"status stored = {ratio(reg['process_stored_per_s'], ceiling)} of it | - | - |",
        f"| MongoDB ceiling: one `find` ($in, {g}) + one `bulk_write`(100) per job | "
        f"{fmt(ceil['find_plus_bulk100_jobs_per_s'])} jobs/s; MRQ regular = "
        f"{ratio(reg['process_stored_per_s'], ceil['find_plus_bulk100_jobs_per_s'])} of it | - | - |",
        f"| MRQ regular at {fmt(reg['cpu_us_per_job'])} µs CPU/job: jobs/s one process could run on a MongoDB "
        f"that takes the writes | {fmt(1e6 / reg['cpu_us_per_job'] if reg['cpu_us_per_job'] else None)} | "
        f"≥ 5,000 | {met(ok(reg['cpu_us_per_job'], 200))} |",
        f"| enqueue → start latency, idle worker, regular | {lat_cell('regular')} | p50 < 5 ms | "
        f"{met(ok(lat['regular_p50_ms'], 5.0))} |",
        f"| enqueue → start latency, idle worker, raw | {lat_cell('raw')} | p50 < 5 ms | "
        f"{met(ok(lat['raw_p50_ms'], 5.0))} |",
        f"| I/O-bound: {io['n']} x `gevent.sleep({IO_SLEEP})`, {g} greenlets, regular | "
        f"{fmt(io_reg['process_per_s'])} jobs/s = {pct(io_reg['fraction_of_ceiling'])} of {fmt(g / IO_SLEEP)} "
        f"({ratio(io_reg['process_per_s'], ceiling)} of the MongoDB ceiling above) | "
        f"≥ 95% | {met(ok(io_reg['fraction_of_ceiling'], 0.95, True))} |",
        f"| I/O-bound, raw | {fmt(io_raw['process_per_s'])} jobs/s = {pct(io_raw['fraction_of_ceiling'])} | ≥ 95% | "
        f"{met(ok(io_raw['fraction_of_ceiling'], 0.95, True))} |",
        f"| 5 no-op plugins, regular | {plug_cell('regular')} | < 5% slower (CPU estimate) | "
        f"{met(ok(preg['overhead_cpu_estimate'], 0.05))} |",
        f"| 5 no-op plugins, raw | {plug_cell('raw')} | - | - |",
        f"| idle worker: RSS, CPU | {fmt(lat['idle_rss_mb'], 1)} MB, {fmt(lat['idle_cpu_pct'], 1)}% of a core "
        "| - | - |",
    ]
    lines += ["", "Process jobs/s = N / (last job end − first job start) from the jobs' stamp lines (the peers' "
              "method), except MRQ regular: N / (first job start → last status stored in MongoDB), since its "
              "statuses are written in batches after the jobs end. Worker CPU µs/job: MRQ = (CPU of the run − CPU "
              "of the same command on an empty queue) / N, "
              "from `os.wait4`; peers (and MRQ in parentheses) = the worker's CPU between first job start and last "
              "job end, /proc sampled every 20 ms. Round trips: the worker's own counters (whole run) / N. Idle RSS: "
              "worker started with no job, once stable; loaded: peak during the run (process tree, 20 ms samples)."]
    return "\n".join(lines)


def summarize(mrq_runs: dict[str, list[dict[str, Any]]], peer_runs: dict[str, list[dict[str, Any]]],
              peer_info: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    def block(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
        ok = [r for r in runs if r.get("ok")] or runs  # failed runs still show, flagged by ok_runs
        return {"median": medians(ok, keys), "ok_runs": sum(bool(r.get("ok")) for r in runs), "runs": runs}

    mrq: dict[str, Any] = {"regular": block(mrq_runs["regular"], RUN_METRICS),
                           "raw": block(mrq_runs["raw"], RUN_METRICS),
                           "latency": block(mrq_runs["latency"], LATENCY_METRICS)}
    for kind in ("regular", "raw"):  # a lost job anywhere must show, not a median
        mrq[kind]["median"]["jobs_lost"] = max((r.get("jobs_lost") or 0) for r in mrq_runs[kind]) \
            if mrq_runs[kind] else None
    mrq["io_bound"] = {"n": (mrq_runs["io"] or [{}])[0].get("n"), "runs": mrq_runs["io"]}
    mrq["plugins"] = {"plugins": PLUGIN_NAMES, "runs": mrq_runs["plugins"]}
    for kind in ("regular", "raw"):
        mrq["io_bound"][kind] = block([r[kind] for r in mrq_runs["io"]], IO_METRICS)
        mrq["io_bound"][kind].pop("runs")
        mrq["plugins"][kind] = block([r[kind] for r in mrq_runs["plugins"]], PLUGIN_METRICS)
        mrq["plugins"][kind].pop("runs")
    peers: dict[str, Any] = {}
    for name, runs in peer_runs.items():
        ok_peer = [r for r in runs if r.get("ok")]
        peers[name] = {"concurrency": peer_info[name]["concurrency"], "bulk_api": peer_info[name].get("bulk_api"),
                       "median": medians(ok_peer, PEER_METRICS), "ok_runs": len(ok_peer), "runs": len(runs),
                       "all_runs": runs}
    return mrq, peers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="jobs per run (default 5000)")
    parser.add_argument("--raw-n", type=int, default=None,
                        help="jobs per raw-queue run (default: 4 x --n, so that its processing window is about as "
                             "long as the fastest peer's at --n; --raw-n equal to --n gives the peers' N exactly)")
    parser.add_argument("--io-n", type=int, default=1000, help="I/O-bound jobs (default 1000)")
    parser.add_argument("--latency-n", type=int, default=200, help="jobs per latency run (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs; medians are reported (default 3)")
    parser.add_argument("--greenlets", type=int, default=50, help="worker greenlets (default 50)")
    parser.add_argument("--peers", action="store_true", help="also run the peers of ../shared/bench")
    parser.add_argument("--peers-configs", default=DEFAULT_PEERS, help=f"default {DEFAULT_PEERS}")
    parser.add_argument("--peers-dir", default=PEERS_DIR)
    parser.add_argument("--out", default="/tmp/mrq-bench.json", help="JSON results (default /tmp/mrq-bench.json)")
    parser.add_argument("--redis", help="use this Redis instead of starting one (keys under a prefix of our own)")
    parser.add_argument("--mongodb", help="use this MongoDB instead of starting SecantusDB (databases "
                        "mrqbench* of our own, dropped after)")
    parser.add_argument("--same-mongodb", action="store_true",
                        help="keep one SecantusDB for every repeat and phase (default: a fresh one per repeat and "
                             "per plugins run)")
    parser.add_argument("--timeout", type=float, default=600, help="per-run worker timeout, s")
    args = parser.parse_args()
    args.raw_n = args.raw_n or 4 * args.n
    if bool(args.redis) != bool(args.mongodb):
        parser.error("give both --redis and --mongodb, or neither")
    for name in ("n", "raw_n", "io_n", "latency_n", "repeats", "greenlets"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    out_abs = os.path.abspath(args.out)
    if out_abs == ROOT or out_abs.startswith(ROOT + os.sep):
        parser.error(f"--out {args.out} is inside the repository; write it elsewhere (e.g. /tmp)")

    from mrq.servers import redis_server_binary

    workdir = tempfile.mkdtemp(prefix="mrq-bench-")
    started = time.time()
    peers_python = ensure_peers_env(args.peers_dir) if args.peers else None
    servers = Servers(args.redis, args.mongodb)
    try:
        bench = Bench(args, servers, workdir)
        mrq_runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("regular", "raw", "io", "latency", "plugins")}
        ceiling_runs: list[dict[str, Any]] = []
        peer_runs: dict[str, list[dict[str, Any]]] = {}
        peer_info: dict[str, dict[str, Any]] = {}
        peer_versions: dict[str, Any] = {}
        loadavg: list[dict[str, Any]] = []
        for rep in range(1, args.repeats + 1):
            loadavg.append({"repeat": rep, "at": time.strftime("%H:%M:%S"), "loadavg": os.getloadavg()})
            log(f"[{rep}/{args.repeats}] load average {os.getloadavg()}")
            # SecantusDB gets slower as data is written to it (dropped databases included): a fresh server
            # per repeat gives every repeat the same starting point.
            target = servers.target if args.same_mongodb and rep > 1 else servers.fresh_mongodb()
            for kind in ("regular", "raw"):
                res = getattr(bench, kind)(target, rep)
                mrq_runs[kind].append(res)
                log(f"[{rep}/{args.repeats}] mrq {kind}: ok={res['ok']} enq1={fmt(res.get('enqueue_one_per_s'))}/s "
                    f"bulk={fmt(res.get('enqueue_bulk_per_s'))}/s proc={fmt(res.get('rate_per_s'))}/s "
                    f"(bodies {fmt(res.get('process_per_s'))}/s, stored {fmt(res.get('process_stored_per_s'))}/s) "
                    f"cpu/job={fmt(res.get('cpu_us_per_job'))}us (window {fmt(res.get('cpu_window_us_per_job'))}) "
                    f"redis_rt/job={fmt(res.get('redis_roundtrips_per_job'), 3)} "
                    f"mongo_rt/job={fmt(res.get('mongodb_roundtrips_per_job'), 3)} lost={res.get('jobs_lost')}")
                if not res["ok"]:
                    log("   worker log tail:\n" + res.get("worker_log_tail", ""))
            ceil = mongo_ceiling(target, min(args.n, 2000), args.greenlets, rep)
            ceiling_runs.append(ceil)
            log(f"[{rep}/{args.repeats}] mongodb ceiling: insert_many={fmt(ceil['insert_many_docs_per_s'])}/s "
                f"bulk100={fmt(ceil['bulk_write_100_docs_per_s'])}/s find={fmt(ceil['find_in_docs_per_s'])}/s")
            io = bench.io_bound(target, rep)
            mrq_runs["io"].append(io)
            log(f"[{rep}/{args.repeats}] io-bound: regular {fmt(io['regular'].get('process_per_s'))}/s "
                f"({pct(io['regular'].get('fraction_of_ceiling'))}), raw {fmt(io['raw'].get('process_per_s'))}/s "
                f"({pct(io['raw'].get('fraction_of_ceiling'))})")
            lat = bench.latency(target, rep)
            mrq_runs["latency"].append(lat)
            log(f"[{rep}/{args.repeats}] latency: regular p50={fmt(lat.get('regular_p50_ms'), 2)}ms "
                f"p99={fmt(lat.get('regular_p99_ms'), 2)}ms, raw p50={fmt(lat.get('raw_p50_ms'), 2)}ms "
                f"p99={fmt(lat.get('raw_p99_ms'), 2)}ms; idle RSS {fmt(lat.get('idle_rss_mb'), 1)} MB")
            plug = bench.plugins(rep)
            mrq_runs["plugins"].append(plug)
            log(f"[{rep}/{args.repeats}] 5 no-op plugins: regular {pct(plug['regular'].get('overhead'))} slower, "
                f"{fmt(plug['regular'].get('cpu_us_per_job_extra'))} us/job; raw {pct(plug['raw'].get('overhead'))} "
                f"slower, {fmt(plug['raw'].get('cpu_us_per_job_extra'))} us/job")
            if peers_python:
                got = peers_trial(peers_python, args.peers_dir, args.peers_configs, args.n, rep, workdir)
                peer_versions = got.get("versions") or peer_versions
                for name, p in (got.get("results") or {}).items():
                    run = dict(p["run"], idle=p["idle"])
                    peer_runs.setdefault(name, []).append(run)
                    peer_info[name] = {"concurrency": p["concurrency"], "bulk_api": p.get("bulk_api")}

        mrq, peers = summarize(mrq_runs, peer_runs, peer_info)
        doc: dict[str, Any] = {
            "benchmark": "bench_mrq", "n": args.n, "raw_n": args.raw_n, "repeats": args.repeats,
            "greenlets": args.greenlets,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "cpus": os.cpu_count(), "loadavg_per_repeat": loadavg, "loadavg_at_end": os.getloadavg()},
            "versions": {name: version(name) for name in ("mrq", "gevent", "pymongo", "redis", "hiredis",
                                                          "SecantusDB", "pluggy")},
            "redis_server": args.redis or redis_server_binary(),
            "mongodb_server": servers.mongodb_server,
            "mrq": mrq,
            "mongodb_ceiling": {"median": medians(ceiling_runs, CEILING_METRICS), "runs": ceiling_runs},
            "peers": peers, "peers_versions": peer_versions,
            "notes": {
                "process_per_s": "N / (last job end - first job start), from the jobs' stamp lines (peers' method)",
                "rate_per_s": "MRQ's headline rate: regular = process_stored_per_s (a job is processed once its "
                              "status and result are stored), raw = process_per_s",
                "process_stored_per_s": "MRQ: N / (first 20 ms poll seeing the queue and in-flight hash empty - "
                                        "first job start): every status stored and acknowledged",
                "cpu_us_per_job": "MRQ: (worker CPU of the run - CPU of the same command on an empty queue) / N, "
                                  "os.wait4; peers: CPU of the worker's process tree between first job start and "
                                  "last job end / N (/proc, 20 ms samples)",
                "cpu_window_us_per_job": "MRQ, the peers' method: CPU between first job start and last job end / N",
                "roundtrips_per_job": "worker's final report counters / N, start-up and shut-down included",
                "median": "each metric's median over the ok runs, taken independently",
            },
        }
        if peers:
            reg, raw = mrq["regular"]["median"], mrq["raw"]["median"]
            doc["ratios_mrq_over_peer"] = {
                name: {"raw_process": ratio(raw["rate_per_s"], p["median"]["process_per_s"], 3),
                       "regular_process": ratio(reg["rate_per_s"], p["median"]["process_per_s"], 3),
                       "raw_enqueue_bulk": ratio(raw["enqueue_bulk_per_s"], p["median"]["enqueue_bulk_per_s"], 3),
                       "regular_enqueue_one": ratio(reg["enqueue_one_per_s"], p["median"]["enqueue_one_per_s"], 3)}
                for name, p in peers.items()}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(markdown(doc))
        print(f"\nJSON: {args.out}  ({doc['elapsed_s']} s; load average per repeat: "
              + ", ".join(f"{x['loadavg'][0]:.2f}" for x in loadavg) + f"; at end {os.getloadavg()[0]:.2f})")
        all_ok = all(mrq[k]["ok_runs"] == args.repeats for k in ("regular", "raw", "latency"))
        return 0 if all_ok else 1
    finally:
        servers.cleanup()
        from mrq.context import connections

        connections.reset()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
