"""Paired runs of MRQ's benchmark with and without ``--plugins metrics``, on the raw fast path (and regular queues).

``python plugins/mrq_metrics/bench/paired.py [--repeats 5] [--raw-n 20000] [--n 3000] [--regular]``

Uses ``bench/bench_mrq.py``'s runs as they are (a burst worker, 50 greenlets, bulk-enqueued no-op jobs, CPU from
the worker's rusage minus an empty run of the same command): each repeat runs the same queue without the plugin
and with ``--plugins metrics --metrics_port <free port>``, in alternating order. Prints, per repeat and as
medians, the rate and the CPU per job, the extra CPU per job, and that extra as a share of a job's CPU (the figure
that does not depend on what else the machine runs) and of its time at the measured rate.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_mrq  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(bench: Any, servers: Any, rep: int, kind: str, with_metrics: bool, n: int, port: bool = True
        ) -> dict[str, Any]:
    target = servers.fresh_mongodb() if kind == "regular" else servers.target
    saved = {k: os.environ.get(k) for k in ("MRQ_METRICS_PORT", "MRQ_METRICS_DIR")}
    if with_metrics and port:
        os.environ["MRQ_METRICS_PORT"] = str(free_port())
        os.environ["MRQ_METRICS_DIR"] = tempfile.mkdtemp(prefix="mrq-metrics-bench-")
    try:
        return bench.processing_run(target, rep, f"metrics{kind}{int(with_metrics)}", raw=kind == "raw", n=n,
                                    enqueue="bulk", plugins=["metrics"] if with_metrics else None)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--raw-n", type=int, default=20000)
    parser.add_argument("--n", type=int, default=3000, help="regular jobs per run (with --regular)")
    parser.add_argument("--regular", action="store_true", help="also pair runs on a regular queue")
    parser.add_argument("--greenlets", type=int, default=50)
    parser.add_argument("--no-port", action="store_true",
                        help="the 'with' runs enable the plugin without --metrics_port: pluggy's dispatch only")
    parser.add_argument("--out", default="/tmp/mrq-metrics-paired.json")
    args = parser.parse_args()
    bench_args = argparse.Namespace(n=args.n, raw_n=args.raw_n, greenlets=args.greenlets, timeout=600.0,
                                    same_mongodb=False)
    servers = bench_mrq.Servers(None, None)
    servers.fresh_mongodb()
    results: dict[str, list[dict[str, Any]]] = {"raw": [], "regular": []}
    try:
        bench = bench_mrq.Bench(bench_args, servers, tempfile.mkdtemp(prefix="mrq-bench-"))
        for rep in range(1, args.repeats + 1):
            for kind in ("raw", "regular") if args.regular else ("raw",):
                n = args.raw_n if kind == "raw" else args.n
                order = [False, True] if rep % 2 else [True, False]
                res = {m: run(bench, servers, rep, kind, m, n, port=not args.no_port) for m in order}
                off, on = res[False], res[True]
                row = {"repeat": rep, "ok": off["ok"] and on["ok"], "order": order, "load": os.getloadavg()[0]}
                for key in ("rate_per_s", "cpu_us_per_job"):
                    row[f"{key}_off"], row[f"{key}_on"] = off.get(key), on.get(key)
                if off.get("cpu_us_per_job") and on.get("cpu_us_per_job") is not None:
                    row["extra_us"] = on["cpu_us_per_job"] - off["cpu_us_per_job"]
                    row["extra_of_cpu"] = row["extra_us"] / off["cpu_us_per_job"]
                    row["extra_of_time"] = row["extra_us"] * (off.get("rate_per_s") or 0) / 1e6
                if off.get("rate_per_s") and on.get("rate_per_s"):
                    row["slower"] = 1 - on["rate_per_s"] / off["rate_per_s"]
                results[kind].append(row)
                print(json.dumps({kind: row}), flush=True)
    finally:
        servers.cleanup()
    for kind, rows in results.items():
        ok = [r for r in rows if r["ok"] and "extra_us" in r]
        if not ok:
            continue
        med = {k: statistics.median(r[k] for r in ok) for k in ("rate_per_s_off", "rate_per_s_on", "cpu_us_per_job_off",
                                                                 "cpu_us_per_job_on", "extra_us", "extra_of_cpu",
                                                                 "extra_of_time", "slower")}
        print(f"{kind}: median over {len(ok)} repeats: " + ", ".join(f"{k} {v:.4g}" for k, v in med.items()))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
