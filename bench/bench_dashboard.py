#!/usr/bin/env python
"""mrq-dashboard at scale: latency of every API route and page with 100,000 jobs, browser render times, the
cost of the dashboard's indexes on status writes, and the cost of the workers' per-minute history.

    python bench/bench_dashboard.py                    # 100,000 jobs, 20 workers, 15 requests per route
    python bench/bench_dashboard.py --jobs 20000 --requests 5 --no-browser   # quick (~1 min)

1. A private redis-server and SecantusDB (``mrq.servers``) on free ports.
2. Seed: ``--jobs`` job documents (8 queues of which 3 subqueues ``crawl/*``, 20 task paths, statuses 70 %
   success, 10 % failed with 4 exception types, 8 % queued, and retry, cancel, started, timeout, maxretries),
   their ids spread over the last 7 days (as a collection whose finished jobs expire after a week), the
   queued ones also in Redis; 20 worker documents with a full 2-hour history (``mrq.history.History``);
   log lines for 200 jobs. The kernel's indexes (``mrq.indexes.ensure_indexes``).
3. ``--index-cost``: status writes as the workers make them (``bulk_write`` of 1000 ``UpdateOne`` by ``_id``
   setting status, dateupdated, worker, exceptiontype, traceback), median of 5 batches, with the kernel's
   indexes only, then after adding each of the dashboard's indexes (``DASHBOARD_INDEXES``) one by one.
4. ``mrq-dashboard`` (default options: counts cached 10 s) as a subprocess; every GET route of the API
   (several job filters) and every page, ``--requests`` times each, median and max in ms. The first request
   of a cached aggregation computes it (reported separately: "cold"); the others read the shared value.
5. Actions, once each: pause/resume, cancel/requeue one job, the count before a bulk action, a bulk
   cancel then requeue of 1,000 jobs.
6. ``--browser`` (default when chromium and chromedriver exist): headless Chromium renders the overview and
   the jobs page, time from navigation to the data shown (median of 5).
7. History: size of a worker report with and without ``report["history"]`` (BSON bytes), CPU time of
   ``History.sample`` per report.

Results: a markdown report on stdout and JSON in ``--out`` (default /tmp/mrq-bench-dashboard.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QUEUES = ["default", "high", "low", "emails", "reports", "crawl/a", "crawl/b", "crawl/c"]
PATHS = [f"tasks.{group}.Task{i}" for group in ("io", "cpu", "mail", "report") for i in range(5)]
STATUSES = ["success"] * 70 + ["failed"] * 10 + ["queued"] * 8 + ["retry"] * 3 + ["cancel"] * 3 + \
           ["started"] * 2 + ["timeout"] * 2 + ["maxretries"] * 2
EXCEPTIONS = ["ConnectionError", "KeyError", "ValueError", "TimeoutError"]


def _id_at(when: float) -> Any:
    from bson import ObjectId

    return ObjectId(int(when).to_bytes(4, "big") + os.urandom(8))


def seed(db: Any, broker: Any, n_jobs: int, n_workers: int) -> dict[str, Any]:
    from bson import ObjectId

    from mrq.history import History

    rng = random.Random(42)
    now = time.time()
    start = now - 7 * 86400
    jobs = db["mrq_jobs"]
    worker_ids = [ObjectId() for _ in range(n_workers)]
    queued: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for chunk in range(0, n_jobs, 1000):
        docs = []
        for i in range(chunk, min(chunk + 1000, n_jobs)):
            created = start + (now - start) * (i / n_jobs) ** 0.5   # denser recently
            status = rng.choice(STATUSES)
            when = dt.datetime.fromtimestamp(created, dt.UTC).replace(tzinfo=None)
            doc: dict[str, Any] = {
                "_id": _id_at(created), "path": rng.choice(PATHS), "queue": rng.choice(QUEUES), "status": status,
                "params": {"user": rng.randint(1, 5000), "url": f"https://example.com/{i}", "n": i % 100},
                "datequeued": when, "dateupdated": when, "retry_count": 0,
                "dateexpires": when + dt.timedelta(days=30)}
            if status not in ("queued",):
                doc["worker"] = rng.choice(worker_ids)
                doc["datestarted"] = when
                doc["totaltime"] = round(rng.random(), 4)
            if status in ("failed", "retry", "timeout", "maxretries"):
                exc = rng.choice(EXCEPTIONS)
                doc.update(exceptiontype=exc, traceback=f"Traceback (most recent call last):\n  ...\n{exc}: boom\n",
                           traceback_history=[{"date": when, "status": status, "exceptiontype": exc,
                                               "traceback": f"{exc}: boom"}])
            if status == "success":
                doc["result"] = {"ok": True, "items": i % 17}
            if status == "queued":
                queued.setdefault(doc["queue"], []).append(str(doc["_id"]))
            docs.append(doc)
        jobs.insert_many(docs, ordered=False)
    for queue, ids in queued.items():
        for part in range(0, len(ids), 1000):
            broker.push(queue, ids[part:part + 1000])
    seeded = time.perf_counter() - t0
    clock = {"now": now - 7200}
    reports = []
    for w, wid in enumerate(worker_ids):
        history = History(clock=lambda: clock["now"])
        counters: Counter[str] = Counter()
        cpu = 0.0
        clock["now"] = now - 7200
        for minute in range(120):
            clock["now"] = now - 7200 + 60 * minute
            for status, weight in (("success", 40), ("failed", 3), ("retry", 1)):
                counters[status] += rng.randint(0, weight)
            cpu += rng.random() * 20
            doc = history.sample(counters, 60 + w + minute // 10, cpu, QUEUES[:4] + ["crawl/a"],
                                 lambda qs: {q: (rng.randint(0, 3000), 0) for q in qs})
        reported = dt.datetime.fromtimestamp(now, dt.UTC).replace(tzinfo=None)
        reports.append({
            "_id": wid, "name": f"host{w % 4}.{1000 + w}", "status": "wait", "host": f"host{w % 4}",
            "pid": 1000 + w, "queues": QUEUES[:4] + ["crawl/"], "active_queues": QUEUES, "greenlets": 50,
            "datestarted": reported - dt.timedelta(hours=2), "datereported": reported,
            "dateexpires": reported + dt.timedelta(hours=1),
            "process": {"cpu": {"user": cpu, "system": cpu / 10}, "mem": {"rss": 80 + w}},
            "jobs": [{"id": ObjectId(), "path": PATHS[j], "queue": "default", "progress": None, "datestarted": reported,
                      "stack": ['  File "tasks/io.py", line 12, in run\n    time.sleep(1)\n'] * 8} for j in range(5)],
            "counters": dict(counters) | {"done": sum(counters.values())}, "history": doc})
    db["mrq_workers"].insert_many(reports)
    for wid in worker_ids[: n_workers - 2]:                # two dead workers: no heartbeat
        broker.heartbeat(str(wid), 3600)
    logged = [d["_id"] for d in jobs.find({"status": "success"}, {"_id": 1}).limit(200)]
    db["mrq_logs"].insert_many([{"job": j, "worker": worker_ids[0], "date": dt.datetime.utcnow(),
                                 "logs": "\n".join(f"line {k}" for k in range(20))} for j in logged])
    return {"seed_seconds": round(seeded, 1), "queued_in_redis": sum(len(v) for v in queued.values()),
            "logged_job": str(logged[0]), "reports": reports}


def index_cost(db: Any, batches: int = 5, size: int = 1000) -> list[dict[str, Any]]:
    """Median seconds of one bulk status write of ``size`` jobs, kernel indexes then + each dashboard index."""
    from mrq_dashboard.indexes import DASHBOARD_INDEXES
    from pymongo import UpdateOne

    jobs = db["mrq_jobs"]
    ids = [d["_id"] for d in jobs.find({"status": "success"}, {"_id": 1}).limit(batches * size * 2)]
    rng = random.Random(1)
    rounds = iter(range(10**6))

    def measure() -> float:
        times = []
        for _ in range(batches):
            r = next(rounds)
            batch = ids[(r * size) % len(ids):][:size] or ids[:size]
            now = dt.datetime.utcnow()
            ops = [UpdateOne({"_id": i}, {"$set": {"status": rng.choice(["failed", "success"]), "dateupdated": now,
                                                   "worker": _id_at(time.time()),
                                                   "exceptiontype": rng.choice(EXCEPTIONS), "traceback": "x"}})
                   for i in batch]
            t0 = time.perf_counter()
            jobs.bulk_write(ops, ordered=False)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    rows = []
    for keys, options in DASHBOARD_INDEXES:  # each against a baseline measured just before (the machine drifts)
        before = measure()
        t0 = time.perf_counter()
        name = jobs.create_index(keys, **options)
        built = time.perf_counter() - t0
        after = measure()
        jobs.drop_index(name)
        rows.append({"indexes": "+ " + ", ".join(k for k, _ in keys) + (" (sparse)" if options else ""),
                     "kernel_only": round(before, 3), "seconds_per_1000": round(after, 3),
                     "build_seconds": round(built, 1)})
    before = measure()
    for keys, options in DASHBOARD_INDEXES:
        jobs.create_index(keys, **options)
    rows.append({"indexes": "+ all five", "kernel_only": round(before, 3), "seconds_per_1000": round(measure(), 3)})
    return rows


def _get(url: str) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as response:
        body = response.read()
        status = response.status
    return time.perf_counter() - t0, status, body


def _post(url: str, token: str, body: Any = None) -> tuple[float, Any]:
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        data = json.loads(response.read())
    return time.perf_counter() - t0, data


def routes(base: str, job_id: str, worker_id: str) -> list[tuple[str, str]]:
    return [
        ("GET /api/config", "/api/config"), ("GET /api/overview", "/api/overview"),
        ("GET /api/statuses", "/api/statuses"), ("GET /api/queues", "/api/queues"),
        ("GET /api/workers", "/api/workers"), ("GET /api/taskpaths", "/api/taskpaths"),
        ("GET /api/exceptions", "/api/exceptions"), ("GET /api/plugins", "/api/plugins"),
        ("GET /api/jobs (no filter)", "/api/jobs"),
        ("GET /api/jobs?status=failed", "/api/jobs?status=failed"),
        ("GET /api/jobs?status=failing (group)", "/api/jobs?status=failing"),
        ("GET /api/jobs?queue=crawl/ (prefix)", "/api/jobs?queue=crawl/"),
        ("GET /api/jobs?path=..", f"/api/jobs?path={PATHS[3]}"),
        ("GET /api/jobs?path=tasks.io.* (wildcard)", "/api/jobs?path=tasks.io.*"),
        ("GET /api/jobs?exceptiontype=..", "/api/jobs?exceptiontype=KeyError"),
        ("GET /api/jobs?status=failed&queue=high&path=..", f"/api/jobs?status=failed&queue=high&path={PATHS[1]}"),
        ("GET /api/jobs?worker=..", f"/api/jobs?worker={worker_id}"),
        ("GET /api/jobs?params={\"n\": 7}", "/api/jobs?params=%7B%22n%22%3A%207%7D"),
        ("GET /api/jobs?skip=1000&limit=50", "/api/jobs?skip=1000&limit=50"),
        ("GET /api/jobs?cursor=.. (page 21 by cursor)", "/api/jobs?cursor=CURSOR"),
        ("GET /api/jobs?limit=500", "/api/jobs?limit=500"),
        ("GET /api/jobs/<id>", f"/api/jobs/{job_id}"), ("GET /api/jobs/<id>/logs", f"/api/jobs/{job_id}/logs"),
        ("GET /api/jobs/count?action=requeue&status=failed", "/api/jobs/count?action=requeue&status=failed"),
        ("GET /api/openapi.json", "/api/openapi.json"),
        ("page /", "/"), ("page /jobs", "/jobs"), ("page /jobs/<id>", f"/jobs/{job_id}"),
        ("page /queues", "/queues"), ("page /workers", "/workers"), ("page /exceptions", "/exceptions"),
        ("static dashboard.js", "/static/dashboard.js"),
    ]


def browser_times(base: str, runs: int) -> dict[str, float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                f"--user-data-dir=/tmp/mrq-bench-chromium-{os.getpid()}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    out = {}
    try:
        for name, path, ready in (("overview", "/", "document.querySelectorAll('.card').length >= 6"),
                                  ("jobs", "/jobs", "document.querySelectorAll('#jobs tbody tr').length >= 50")):
            times = []
            for _ in range(runs):
                driver.get("about:blank")
                t0 = time.perf_counter()
                driver.get(base + path)
                while not driver.execute_script("return " + ready):
                    if time.perf_counter() - t0 > 120:
                        raise RuntimeError(f"{path} not rendered in 120 s")
                    time.sleep(0.01)
                times.append(time.perf_counter() - t0)
            out[name] = round(statistics.median(times) * 1000)
    finally:
        driver.quit()
        shutil.rmtree(f"/tmp/mrq-bench-chromium-{os.getpid()}", ignore_errors=True)
    return out


def history_cost(report: dict[str, Any]) -> dict[str, Any]:
    import bson

    from mrq.history import History

    with_history = len(bson.encode(report))
    without = len(bson.encode({k: v for k, v in report.items() if k != "history"}))
    history = History()
    counters: Counter[str] = Counter()
    queues = [f"q{i}" for i in range(20)]
    t0 = time.process_time()
    n = 2000
    for i in range(n):
        counters["success"] += 7
        counters["failed"] += 1
        history.sample(counters, 100, i * 0.01, queues, lambda qs: {q: (5, 0) for q in qs})
    per_sample = (time.process_time() - t0) / n
    return {"report_bytes_with_history": with_history, "report_bytes_without": without,
            "history_bytes": with_history - without, "sample_cpu_ms": round(per_sample * 1000, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--browser", action=argparse.BooleanOptionalAction,
                        default=bool(shutil.which("chromium") and shutil.which("chromedriver")))
    parser.add_argument("--index-cost", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default="/tmp/mrq-bench-dashboard.json")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)

    from mrq.broker import Broker
    from mrq.connections import make_mongodb, make_redis
    from mrq.indexes import ensure_indexes
    from mrq.servers import MongoServer, RedisServer

    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "jobs": args.jobs, "workers": args.workers, "requests": args.requests,
                               "python": platform.python_version(), "machine": platform.machine()}
    redis_server, mongo_server = RedisServer().start(), MongoServer().start()
    dashboard = None
    try:
        uri = mongo_server.uri("bench_dashboard")
        db = make_mongodb(uri)
        broker = Broker(make_redis(redis_server.url), "mrq")
        ensure_indexes(db, db, 16 * 1024 * 1024)
        print(f"seeding {args.jobs} jobs and {args.workers} workers...", file=sys.stderr, flush=True)
        seeded = seed(db, broker, args.jobs, args.workers)
        reports = seeded.pop("reports")
        results["seed"] = seeded
        if args.index_cost:
            print("index cost...", file=sys.stderr, flush=True)
            results["index_cost"] = index_cost(db)
        results["history"] = history_cost(reports[0])
        env = dict(os.environ, MRQ_REDIS=redis_server.url, MRQ_MONGODB_JOBS=uri)
        print("starting mrq-dashboard (creates its indexes)...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        dashboard = subprocess.Popen([sys.executable, "-m", "mrq_dashboard.cli", "--dashboard_port", "0"], env=env,
                                     stdout=subprocess.PIPE, text=True)
        base = dashboard.stdout.readline().split()[-1].rstrip("/")  # type: ignore[union-attr]
        results["dashboard_start_seconds"] = round(time.perf_counter() - t0, 1)
        cold = {}
        for name in ("statuses", "exceptions"):
            elapsed, _, body = _get(f"{base}/api/{name}")
            cold[name] = {"first_request_ms": round(elapsed * 1000), "aggregation_ms": round(
                json.loads(body)["counts"]["took"] * 1000)}
        results["cold"] = cold
        job_id = seeded["logged_job"]
        worker_id = str(reports[0]["_id"])
        rows = []
        page = json.loads(_get(f"{base}/api/jobs?limit=1000")[2])["jobs"]
        cursor = page[999]["id"] if len(page) >= 1000 else page[-1]["id"]
        for name, path in routes(base, job_id, worker_id):
            path = path.replace("CURSOR", cursor)
            times = []
            for _ in range(args.requests):
                elapsed, status, _ = _get(base + path)
                assert status == 200, (path, status)
                times.append(elapsed)
            rows.append({"route": name, "median_ms": round(statistics.median(times) * 1000, 1),
                         "max_ms": round(max(times) * 1000, 1)})
            print(f"  {name}: {rows[-1]['median_ms']} ms", file=sys.stderr, flush=True)
        results["routes"] = rows
        token = json.loads(_get(base + "/api/config")[2])["csrf_token"]
        actions = {}
        actions["POST /api/queues/<q>/pause"] = _post(f"{base}/api/queues/low/pause", token)[0]
        actions["POST /api/queues/<q>/resume"] = _post(f"{base}/api/queues/low/resume", token)[0]
        queued = db["mrq_jobs"].find_one({"status": "queued"}, {"_id": 1})["_id"]
        actions["POST /api/jobs/<id>/cancel"] = _post(f"{base}/api/jobs/{queued}/cancel", token)[0]
        actions["POST /api/jobs/<id>/requeue"] = _post(f"{base}/api/jobs/{queued}/requeue", token)[0]
        count_url = f"{base}/api/jobs/count?action=cancel&queue=low"
        actions["GET /api/jobs/count?action=cancel&queue=low"] = _get(count_url)[0]
        elapsed, done = _post(f"{base}/api/jobs/cancel", token, {"queue": "low"})
        actions[f"POST /api/jobs/cancel {{queue: low}} (bulk, {done['cancelled']} jobs)"] = elapsed
        elapsed, done = _post(f"{base}/api/jobs/requeue", token, {"queue": "low", "status": "cancel"})
        actions[f"POST /api/jobs/requeue {{queue: low, status: cancel}} (bulk, {done['requeued']} jobs)"] = elapsed
        results["actions_ms"] = {k: round(v * 1000) for k, v in actions.items()}
        if args.browser:
            print("browser...", file=sys.stderr, flush=True)
            results["browser_ms"] = browser_times(base, 5)
    finally:
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait(10)
        redis_server.stop()
        mongo_server.stop()
        redis_server.cleanup()
        mongo_server.cleanup()
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2, default=str)
    print(report(results))
    return 0


def report(r: dict[str, Any]) -> str:
    lines = [f"## mrq-dashboard, {r['jobs']:,} jobs, {r['workers']} workers ({r['date']})", "",
             f"Seed {r['seed']['seed_seconds']} s; dashboard start (its indexes built) "
             f"{r.get('dashboard_start_seconds')} s.",
             "", "| route | median ms | max ms |", "|---|---|---|"]
    lines += [f"| {row['route']} | {row['median_ms']} | {row['max_ms']} |" for row in r.get("routes", [])]
    lines += ["", "Cold aggregations (first request after start; then shared for --dashboard_cache_ttl):", ""]
    lines += [f"* {k}: first request {v['first_request_ms']} ms, aggregation {v['aggregation_ms']} ms"
              for k, v in r.get("cold", {}).items()]
    lines += ["", "| action | ms |", "|---|---|"] + [f"| {k} | {v} |" for k, v in r.get("actions_ms", {}).items()]
    if "browser_ms" in r:
        lines += ["", "| headless Chromium: navigation to data shown | ms |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r["browser_ms"].items()]
    if "index_cost" in r:
        lines += ["", "| index added to the kernel's | bulk status write of 1000 jobs, s, kernel's indexes only "
                  "(just before) | with the index | build on the seeded collection, s |", "|---|---|---|---|"]
        lines += [f"| {row['indexes']} | {row['kernel_only']} | {row['seconds_per_1000']} | "
                  f"{row.get('build_seconds', '')} |" for row in r["index_cost"]]
    h = r["history"]
    lines += ["", f"History: worker report {h['report_bytes_without']:,} B without, {h['report_bytes_with_history']:,}"
              f" B with `history` ({h['history_bytes']:,} B); `History.sample` {h['sample_cpu_ms']} ms CPU per report."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
