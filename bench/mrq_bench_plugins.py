"""Five no-op plugins for ``bench/bench_mrq.py``'s plugin-overhead run, enabled by dotted path::

    mrq-worker --plugins mrq_bench_plugins:noop1,mrq_bench_plugins:noop2,...,mrq_bench_plugins:noop5

Each implements every per-job hook (``mrq_jobs_dequeued`` once per batch, ``mrq_job_execute`` as a wrapper,
``mrq_job_finished``, ``mrq_job_status_changed``) and does nothing in it: what is measured is the cost of the
hook dispatch itself.
"""

from __future__ import annotations

from typing import Any

from mrq.hookspecs import hookimpl


class NoopPlugin:
    @hookimpl
    def mrq_jobs_dequeued(self, worker: Any, jobs: list[Any]) -> None:
        pass

    @hookimpl(wrapper=True)
    def mrq_job_execute(self, worker: Any, job: Any) -> Any:
        return (yield)

    @hookimpl
    def mrq_job_finished(self, worker: Any, job: Any, status: str) -> None:
        pass

    @hookimpl
    def mrq_job_status_changed(self, job_id: Any, status: str, fields: dict[str, Any]) -> None:
        pass


noop1, noop2, noop3, noop4, noop5 = (NoopPlugin() for _ in range(5))
NAMES = [f"mrq_bench_plugins:noop{i}" for i in range(1, 6)]
