"""The README's table, row by row, with a real worker: each parent final status x each policy."""

from __future__ import annotations

import re

from mrq.job import Job, queue_job
from wf_helpers import HERE, T, doc, start_worker, wf_config_fixture

README = HERE.parent / "README.md"

wf_config_ = wf_config_fixture  # the fixture "wf_config" of this module


def table() -> dict[str, dict[str, str]]:
    text = README.read_text()
    header = re.search(r"^\| parent ends as \|(.*)\|$", text, re.M)
    assert header
    policies = [c.strip().strip("`") for c in header.group(1).split("|")]
    rows = re.findall(r"^\| `([a-z]+)` \|(.*)\|$", text[header.end():], re.M)
    return {status: dict(zip(policies, [c.strip() for c in cells.split("|")], strict=True))
            for status, cells in rows}


def parent_ending_as(status: str):
    if status == "timeout":
        return queue_job(T + "Slow", {"t": 5})
    if status == "depfailed":
        grand = queue_job(T + "End", {"status": "failed"})
        return queue_job(T + "End", {}, depends_on=[grand])
    return queue_job(T + "End", {"status": status})


def test_the_table_covers_every_final_status_and_policy():
    rows = table()
    assert set(rows) == {"success", "failed", "maxretries", "cancel", "abort", "timeout", "maxconcurrency",
                         "maxworkerdeaths", "depfailed"}
    assert all(set(r) == {"success", "ended", "not_failed"} for r in rows.values())


def test_every_row_with_a_real_worker(wf_config, mrq_worker):
    rows = table()
    cases = []
    for parent_status, by_policy in rows.items():
        parent = parent_ending_as(parent_status)
        if parent_status == "cancel":
            assert Job(parent).cancel()
        for policy, expected in by_policy.items():
            child = queue_job(T + "End", {"value": f"{parent_status}/{policy}"}, depends_on=[parent],
                              depends_policy=policy)
            assert doc(child)["status"] == ("waiting" if parent_status != "cancel" else
                                            "queued" if expected == "runs" else "depfailed")
            cases.append((parent_status, policy, expected, parent, child))
    start_worker(mrq_worker)
    mrq_worker.wait_for_idle()
    wrong = []
    for parent_status, policy, expected, parent, child in cases:
        d = doc(child)
        assert doc(parent)["status"] == parent_status, (parent_status, doc(parent)["status"])
        if expected == "runs":
            ok = d["status"] == "success" and d["result"] == f"{parent_status}/{policy}"
        else:
            ok = d["status"] == "depfailed" and d["wf_parent"] == parent and d["wf_parent_status"] == parent_status
        if not ok:
            wrong.append((parent_status, policy, expected, d["status"]))
    assert not wrong
