"""Round trips per job at saturation, counted (never timed): pymongo command monitoring and a Redis call counter."""

from __future__ import annotations

from mrq.job import queue_jobs
from mrq.queue import count_jobs

N = 2000


def test_roundtrips_per_job_at_saturation(mrq_worker):
    ids = queue_jobs("tests.tasks.general.noop", [{"i": i} for i in range(N)])
    assert len(ids) == N
    mrq_worker.start("--greenlets", "50", "--dequeue_strategy", "burst", wait=False,
                     env={"MRQ_FLUSH_INTERVAL": "0.2", "MRQ_HEARTBEAT_INTERVAL": "1", "MRQ_REPORT_INTERVAL": "10"})
    assert mrq_worker.proc.wait(120) == 0
    assert count_jobs() == {"default": {"success": N}}  # jobs lost: 0
    counters = mrq_worker.report()["counters"]
    assert counters["success"] == N
    redis_per_job = counters["redis_roundtrips"] / N
    mongodb_per_job = counters["mongodb_roundtrips"] / N
    print(f"round trips per job: redis {redis_per_job:.3f}, mongodb {mongodb_per_job:.3f}")
    assert redis_per_job <= 0.1, counters
    assert mongodb_per_job <= 0.1, counters
