"""depends_on, groups, chains, run-time children, requeue, cancel, and errors; with real workers."""

from __future__ import annotations

import time

import pytest
from mrq.context import connections
from mrq.exceptions import InvalidParams
from mrq.job import Job, queue_job, queue_jobs
from mrq.testing import wait_until
from wf_helpers import ENV, T, doc, start_worker, status, wf_config_fixture

from mrq_workflows import cancel_workflow, chain, group, parents, workflow_ids
from mrq_workflows.graph import EDGES

wf_config_ = wf_config_fixture  # the fixture "wf_config" of this module


def test_errors_say_what_happened_and_write_nothing(wf_config):
    parent = queue_job(T + "End", {})
    count = connections.mongodb_jobs["mrq_jobs"].count_documents({})
    from bson import ObjectId
    ghost = ObjectId()
    with pytest.raises(InvalidParams, match=f"no job with id {ghost}.*Queue the parent first"):
        queue_job(T + "End", {}, depends_on=[parent, ghost])
    with pytest.raises(InvalidParams, match="is not a dependency policy: use one of"):
        queue_job(T + "End", {}, depends_on=[parent], depends_policy="all")
    with pytest.raises(InvalidParams, match="would depend on itself"):
        queue_job(T + "End", {}, job_id=parent, depends_on=[parent])
    with pytest.raises(InvalidParams, match="is not a job id"):
        queue_job(T + "End", {}, depends_on=["nope"])
    with pytest.raises(InvalidParams, match="without depends_on"):
        queue_job(T + "End", {}, depends_policy="ended")
    assert connections.mongodb_jobs["mrq_jobs"].count_documents({}) == count


def test_the_option_needs_the_plugin(mrq_config):
    parent = queue_job(T + "End", {})
    with pytest.raises(InvalidParams, match=r"\['depends_on'\] that no enabled plugin takes.*--plugins workflows"):
        queue_job(T + "End", {}, depends_on=[parent])


def test_waits_with_its_own_status_then_runs_parents_already_ended_count(wf_config, mrq_worker):
    done = queue_job(T + "End", {"value": 1})
    start_worker(mrq_worker)
    mrq_worker.wait_for_idle()
    assert status(done) == "success"
    slow = queue_job(T + "Slow", {"t": 0.9, "value": 2})
    child = queue_job(T + "End", {"value": "child"}, depends_on=[done, slow])
    d = doc(child)
    assert d["status"] == "waiting" and d["wf_left"] == 1  # the parent that ended before is counted at once
    time.sleep(0.3)
    assert status(child) == "waiting"  # the slow parent runs
    assert Job(child).wait(timeout=20) == "child", {k: v for k, v in doc(child).items() if k not in ("params",)}
    assert doc(slow)["status"] == "success"
    assert sorted(parents(child)) == sorted([done, slow])
    # Edges are O(1) each: the child's document holds a counter, not its parents.
    assert connections.mongodb_jobs[EDGES].count_documents({"child": child}) == 2
    assert "wf_parents" not in doc(child) and doc(child)["wf_left"] == 0


def test_a_retried_parent_keeps_its_dependents_waiting(wf_config, mrq_worker):
    parent = queue_job(T + "End", {"status": "retry_once", "value": 7})
    child = queue_job(T + "End", {"value": "after"}, depends_on=[parent])
    start_worker(mrq_worker)
    wait_until(lambda: doc(parent).get("retry_count") == 1, 20, "the parent's retry")
    assert status(child) == "waiting"
    assert Job(child).wait(timeout=20) == "after"
    assert doc(parent)["status"] == "success"


def test_a_requeued_failed_parent_rearms_the_whole_chain(wf_config, mrq_worker):
    a, b, c = chain((T + "End", {"status": "failed"}), (T + "End", {"value": "b"}), (T + "End", {"value": "c"}))
    start_worker(mrq_worker)
    wait_until(lambda: status(c) == "depfailed", 20, "the chain ended")
    assert doc(b)["wf_parent"] == a and doc(c)["wf_parent"] == b and doc(c)["wf_parent_status"] == "depfailed"
    # Fix the cause, requeue the failed job: the rest of the chain waits again, then runs.
    assert mrq_worker.stop() == 0
    connections.mongodb_jobs["mrq_jobs"].update_one({"_id": a}, {"$set": {"params.status": "success"}})
    assert Job(a).requeue()
    assert status(b) == "waiting" and status(c) == "waiting"
    assert doc(b)["wf_left"] == 1 and "wf_parent" not in doc(b)
    start_worker(mrq_worker)
    assert Job(c).wait(timeout=20) == "c" and status(b) == "success"


def test_chain_passes_the_previous_result(wf_config, mrq_worker):
    ids = chain((T + "End", {"value": 1}), (T + "Sum", {}), (T + "End", {"value": 3}), pass_result="previous")
    start_worker(mrq_worker)
    assert Job(ids[-1]).wait(timeout=20) == 3
    assert doc(ids[1])["params"]["previous"] == 1 and doc(ids[2])["params"]["previous"] == 1


def test_group_callback_reads_its_members_results(wf_config, mrq_worker):
    members = queue_jobs(T + "End", [{"value": n} for n in range(30)])
    callback = group(members).then(T + "Sum", {})
    start_worker(mrq_worker)
    assert Job(callback).wait(timeout=30) == sum(range(30))
    assert len(doc(callback)["params"]) == 0  # the members are not in its params


def test_a_running_job_adds_children_its_dependents_wait_for(wf_config, mrq_worker):
    crawl = queue_job(T + "Crawl", {"pages": 5})
    index = queue_job(T + "Sum", {}, depends_on=[crawl], depends_policy="ended")
    start_worker(mrq_worker)
    # crawl returns 5, the pages 0..4: the index waited for all six
    assert Job(index).wait(timeout=30) == 5 + sum(range(5))
    assert len(parents(index)) == 6


def test_cancel_a_waiting_dependent_and_a_whole_workflow(wf_config, mrq_worker):
    parent = queue_job(T + "Slow", {"t": 0.8})
    lone = queue_job(T + "End", {}, depends_on=[parent])
    after_lone = queue_job(T + "End", {}, depends_on=[lone])
    assert Job(lone).cancel() and status(lone) == "cancel"
    assert status(after_lone) == "depfailed" and doc(after_lone)["wf_parent"] == lone
    root = queue_job(T + "Slow", {"t": 30})
    mid = queue_job(T + "End", {}, depends_on=[root])
    leaf = queue_job(T + "End", {}, depends_on=[mid], depends_policy="ended")
    assert workflow_ids(leaf) == {root, mid, leaf}
    start_worker(mrq_worker)
    wait_until(lambda: status(root) == "started", 20, "the root running")
    assert cancel_workflow(mid) == 3
    wait_until(lambda: all(status(i) == "cancel" for i in (root, mid, leaf)), 20, "all cancelled")
    mrq_worker.wait_for_idle()
    assert status(parent) == "success"


def test_a_parent_ended_maxworkerdeaths_by_the_recovery_decides_its_dependents(wf_config, mrq_worker, tmp_path):
    """The kernel's recovery stores maxworkerdeaths itself (no worker writes it): it reports it to plugins."""
    poison = queue_job("tests.tasks.general.Crash", {"file": str(tmp_path / "runs")})
    waits = queue_job(T + "End", {"value": "ran"}, depends_on=[poison], depends_policy="ended")
    fails = queue_job(T + "End", {}, depends_on=[poison])
    mrq_worker.start("--plugins", "workflows,cleaning", "--processes", "2", "--max_worker_deaths", "1",
                     env=dict(ENV, MRQ_CLEANING_DEAD_INTERVAL="0.3", MRQ_CLEANING_GRACE="1"), wait=False)
    try:
        assert Job(waits).wait(timeout=60) == "ran"
        assert status(poison) == "maxworkerdeaths" and status(fails) == "depfailed"
    finally:
        mrq_worker.stop()
