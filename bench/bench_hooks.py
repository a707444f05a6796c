"""Cost of hook dispatch per job with five no-op plugins, against MRQ's per-job processing time.

    python bench/bench_hooks.py [--n 20000] [--jobs-per-s 450]

Runs the per-job hook sequence of a worker (``mrq_job_execute`` through ``Job.perform``,
``mrq_job_finished``, ``mrq_job_status_changed``, plus ``mrq_jobs_dequeued`` once per batch of 50) with
0 and with 5 no-op plugins implementing each of them, and reports the extra microseconds per job and
that cost as a share of the time per job at the processing rate measured by ``bench/bench_mrq.py``
(``--jobs-per-s``). No server is needed: it is a CPU measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import gevent

from mrq.hookspecs import hookimpl
from mrq.job import Job
from mrq.plugins import PluginManager
from mrq.task import task_settings

DEFAULTS = {"default_job_timeout": 3600, "default_job_max_retries": 3, "default_job_retry_delay": 3,
            "default_job_retry_backoff": 2, "default_job_retry_max_delay": 60, "default_job_result_ttl": 60,
            "default_job_abort_ttl": 60, "default_job_cancel_ttl": 60, "default_job_ttl": 60}


class NoopPlugin:
    @hookimpl(wrapper=True)
    def mrq_job_execute(self, job: Job) -> Any:
        return (yield)

    @hookimpl
    def mrq_job_finished(self, job: Job, status: str) -> None:
        pass

    @hookimpl
    def mrq_job_status_changed(self, job_id: Any, status: str, fields: dict[str, Any]) -> None:
        pass

    @hookimpl
    def mrq_jobs_dequeued(self, jobs: list[Job]) -> None:
        pass


def per_job_seconds(n_plugins: int, n: int) -> float:
    import mrq.context as context

    pm = PluginManager()
    for i in range(n_plugins):
        pm.register(NoopPlugin(), f"noop{i}")
    config: Any = type("C", (dict,), {})(DEFAULTS)
    config.plugin_manager = pm
    context._state["config"] = config  # what get_plugin_manager() reads
    settings = task_settings("mrq.examples.tasks.add", DEFAULTS, load=False)
    hook = pm.hook

    def run() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            job = Job(None, {"path": "mrq.examples.tasks.add", "params": {"a": i, "b": 1}})
            if i % 50 == 0:
                hook.mrq_jobs_dequeued(worker=None, jobs=[job])
            outcome = job.perform(settings)
            hook.mrq_job_finished(worker=None, job=job, status=outcome.status)
            hook.mrq_job_status_changed(job_id=job.id, status=outcome.status, fields=outcome.set)
        return (time.perf_counter() - t0) / n

    return gevent.spawn(run).get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs-per-s", type=float, default=450.0,
                        help="MRQ processing rate measured by bench_mrq.py on the same machine")
    args = parser.parse_args()
    per_job_seconds(0, 1000)  # warm up imports and caches
    base, five = [], []
    for _ in range(args.repeats):  # interleaved, so that a slow phase of the machine hits both
        base.append(per_job_seconds(0, args.n))
        five.append(per_job_seconds(5, args.n))
    b, f = statistics.median(base), statistics.median(five)
    extra = f - b
    share = extra * args.jobs_per_s
    print("| plugins | µs per job (kernel path: perform + hooks) |\n|---|---|")
    print(f"| 0 | {b * 1e6:.1f} |\n| 5 no-op | {f * 1e6:.1f} |")
    print(f"\nHook dispatch of 5 no-op plugins: {extra * 1e6:.1f} µs per job = {share * 100:.2f}% of the time "
          f"per job at {args.jobs_per_s:.0f} jobs/s (target: under 5%).")


if __name__ == "__main__":
    main()
