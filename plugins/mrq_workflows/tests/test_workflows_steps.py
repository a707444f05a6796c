"""Durable steps: a job killed (SIGKILL of its worker) during its third step reruns only that step."""

from __future__ import annotations

import pytest
from mrq.exceptions import MRQError
from mrq.job import Job, queue_job
from mrq.testing import wait_until
from wf_helpers import ENV, T, doc, wf_config_fixture

from mrq_workflows import step

wf_config_ = wf_config_fixture  # the fixture "wf_config" of this module

CLEANING_FAST = {"MRQ_CLEANING_DEAD_INTERVAL": "0.3", "MRQ_CLEANING_GRACE": "1"}


def lines(path) -> list[str]:
    return [line.split(" ")[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_killed_job_reruns_only_the_step_that_did_not_end(wf_config, mrq_worker_factory, tmp_path):
    effects = tmp_path / "effects"
    job = queue_job(T + "ThreeSteps", {"file": str(effects), "t3": 3})
    first = mrq_worker_factory(ENV).start("--plugins", "workflows")
    wait_until(lambda: "three-started" in lines(effects), 20, "step 3 started")
    first.kill()  # SIGKILL during step 3
    assert set(doc(job)["wf_steps"]) == {"one", "two"}
    second = mrq_worker_factory(ENV).start("--plugins", "workflows,cleaning", env=CLEANING_FAST)
    try:
        assert Job(job).wait(timeout=60) == ["one-done", "two-done", "three-done"]
    finally:
        second.stop()
    assert lines(effects) == ["one", "two", "three-started", "three-started", "three"]
    assert set(doc(job)["wf_steps"]) == {"one", "two", "three"}


def test_a_step_outside_a_job_says_so(wf_config):
    with pytest.raises(MRQError, match="runs inside a task"):
        step("charge")
