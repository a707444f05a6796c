"""The dependency graph in MongoDB: one edge document per (parent, dependent), a counter on each dependent.

* ``mrq_workflow_edges``: ``{_id, parent, child, policy, state}``; ``state`` is ``w`` (the parent has not ended),
  ``ok`` (its end lets the dependent run) or ``bad`` (its end means the dependent can never run). Indexes
  ``(parent, state)`` and ``(child, state)``. Edges are never rewritten with the rest of the workflow: O(1) per edge.
* On a dependent's job document: ``status`` = ``waiting``, ``wf_left`` = its edges not ``ok`` (parents left),
  ``wf_policy``; when it can never run: ``status`` = ``depfailed``, ``wf_parent`` (the parent that decided it),
  ``wf_parent_status``.

A parent's end flips its ``w`` edges (one ``update_many`` per dependent: concurrent resolvers each flip disjoint
edges, so each edge is counted once), then decrements the dependent's counter by the number flipped; the
decrement that reaches 0 queues the dependent (status ``waiting`` -> ``queued`` guarded by the status, then one
Redis push). A ``bad`` edge ends the dependent as ``depfailed`` and its own dependents are resolved in turn
(a loop, not a recursion: a chain of 10,000 cascades without a deep stack).
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from bson import ObjectId
from mrq import status as st
from mrq.context import connections, get_broker, get_current_config, get_plugin_manager
from mrq.exceptions import InvalidParams
from mrq.job import JOBS, utcnow
from pymongo import ASCENDING, ReturnDocument

__all__ = ["EDGES", "WAITING", "DEPFAILED", "POLICIES", "FAILURES", "verdict", "ensure_indexes", "parent_ids",
           "check_policy", "on_ended", "on_requeued", "insert_edges"]

EDGES = "mrq_workflow_edges"
WAITING = "waiting"
DEPFAILED = "depfailed"
#: ``success``: run once every parent succeeded (default); ``ended``: once every parent ended, whatever its
#: status; ``not_failed``: once every parent ended, unless one failed (``cancel`` and ``abort`` are not failures).
POLICIES = ("success", "ended", "not_failed")
#: Final statuses that count as a failure for the policy ``not_failed``.
FAILURES = frozenset({st.FAILED, st.MAXRETRIES, st.TIMEOUT, st.MAXCONCURRENCY, st.MAXWORKERDEATHS, DEPFAILED})
_BATCH = 1000

log = logging.getLogger("mrq_workflows")
_local = threading.local()  # greenlet-local in a gevent-patched worker: "this greenlet is resolving already"


def verdict(policy: str, status: str) -> bool:
    """Whether a parent that ended with ``status`` lets a dependent of ``policy`` run."""
    if policy == "ended":
        return True
    if policy == "not_failed":
        return status not in FAILURES
    return status == st.SUCCESS


def check_policy(policy: Any) -> str:
    if policy not in POLICIES:
        raise InvalidParams(f"depends_policy={policy!r:.60} is not a dependency policy: use one of {POLICIES} "
                            "(success: every parent succeeded; ended: every parent ended; not_failed: every parent "
                            "ended and none failed).")
    return str(policy)


def parent_ids(value: Any) -> list[ObjectId]:
    """``depends_on`` as a list of distinct ObjectIds (ids, hex strings, or objects with an ``id``)."""
    if isinstance(value, (str, bytes, ObjectId)) or not isinstance(value, Iterable):
        value = [value]
    out: dict[ObjectId, None] = {}
    for item in value:
        item = getattr(item, "id", item)
        if isinstance(item, str) and ObjectId.is_valid(item):
            item = ObjectId(item)
        if not isinstance(item, ObjectId):
            raise InvalidParams(f"depends_on: {item!r:.60} is not a job id (an ObjectId, its 24-hexadecimal-"
                                "character string, or a Job).")
        out[item] = None
    return list(out)


def jobs() -> Any:
    return connections.mongodb_jobs[JOBS]


def edges() -> Any:
    return connections.mongodb_jobs[EDGES]


_indexed: set[str] = set()


def ensure_indexes() -> None:
    """The edges' indexes (idempotent; once per process and database)."""
    db = connections.mongodb_jobs
    if db.name in _indexed:
        return
    edges().create_index([("parent", ASCENDING), ("state", ASCENDING)])
    edges().create_index([("child", ASCENDING), ("state", ASCENDING)])
    _indexed.add(db.name)


def insert_edges(children: list[ObjectId], parents: list[ObjectId], policy: str) -> None:
    ensure_indexes()
    batch: list[dict[str, Any]] = []
    for child in children:
        for parent in parents:
            batch.append({"parent": parent, "child": child, "policy": policy, "state": "w"})
            if len(batch) >= _BATCH:
                edges().insert_many(batch, ordered=False)
                batch = []
    if batch:
        edges().insert_many(batch, ordered=False)


def ended_statuses(ids: list[ObjectId]) -> dict[ObjectId, str]:
    """The final statuses of those of ``ids`` that ended."""
    out: dict[ObjectId, str] = {}
    for i in range(0, len(ids), _BATCH):
        for d in jobs().find({"_id": {"$in": ids[i:i + _BATCH]}, "status": {"$in": sorted(st.FINAL_STATUSES)}},
                             {"status": 1}):
            out[d["_id"]] = d["status"]
    return out


class _Busy:
    """Marks this greenlet as resolving: the status changes it reports itself are not resolved a second time."""

    def __enter__(self) -> bool:
        was = getattr(_local, "busy", False)
        _local.busy = True
        self.was = was
        return was

    def __exit__(self, *exc: Any) -> None:
        _local.busy = self.was


def busy() -> bool:
    return bool(getattr(_local, "busy", False))


def _report(changes: list[tuple[ObjectId, str, dict[str, Any]]]) -> None:
    """Tell every plugin (this one ignores them: it cascades by itself) of the statuses written here."""
    if not changes:
        return
    hook = get_plugin_manager().hook
    with _Busy():
        for job_id, status, fields in changes:
            hook.mrq_job_status_changed(job_id=job_id, status=status, fields=fields)
        hook.mrq_jobs_status_changed(changes=changes)


def on_ended(ended: dict[ObjectId, str]) -> None:
    """Parents ``ended`` (id -> final status): resolve their waiting edges; queue the dependents whose last
    parent this was, end as ``depfailed`` those that can never run, and go on with the dependents of those."""
    while ended:
        parents = list(ended)
        found: list[dict[str, Any]] = []
        for i in range(0, len(parents), _BATCH):
            found += edges().find({"parent": {"$in": parents[i:i + _BATCH]}, "state": "w"},
                                  {"parent": 1, "child": 1, "policy": 1})
        if not found:
            return
        ok: dict[ObjectId, list[ObjectId]] = defaultdict(list)
        bad: dict[ObjectId, list[dict[str, Any]]] = defaultdict(list)
        for e in found:
            if verdict(e.get("policy", "success"), ended[e["parent"]]):
                ok[e["child"]].append(e["_id"])
            else:
                bad[e["child"]].append(e)
        failed: list[tuple[ObjectId, str, dict[str, Any]]] = []
        for child, bad_edges in bad.items():
            if not edges().update_many({"_id": {"$in": [e["_id"] for e in bad_edges]}, "state": "w"},
                                       {"$set": {"state": "bad"}}).modified_count:
                continue
            parent = bad_edges[0]["parent"]
            fields = _depfailed_fields(child, parent, ended[parent])
            if jobs().update_one({"_id": child, "status": WAITING}, {"$set": fields}).modified_count:
                failed.append((child, DEPFAILED, fields))
        release: list[dict[str, Any]] = []
        for child, edge_ids in ok.items():
            flipped = edges().update_many({"_id": {"$in": edge_ids}, "state": "w"},
                                          {"$set": {"state": "ok"}}).modified_count
            if not flipped:
                continue
            doc = jobs().find_one_and_update({"_id": child}, {"$inc": {"wf_left": -flipped}},
                                             {"wf_left": 1, "status": 1, "queue": 1, "path": 1, "datedue": 1,
                                              "wf_pass_result": 1},
                                             return_document=ReturnDocument.AFTER)
            if doc is not None and doc.get("wf_left", 0) <= 0 and doc.get("status") == WAITING:
                release.append(doc)
        queue_released(release)
        _hold_parents(found, {d["_id"] for d in release} | {c for c, _, _ in failed})
        _report(failed)
        ended = {child: DEPFAILED for child, _, _ in failed}


#: A parent whose dependents still wait when it ends is kept at least this long (its result is theirs to read):
#: its ``dateexpires`` is pushed to now + this, never shortened.
HOLD_TTL = 30 * 86400.0


def _hold_parents(found: list[dict[str, Any]], done: set[ObjectId]) -> None:
    held = list({e["parent"] for e in found if e["child"] not in done})
    if held:
        until = utcnow() + datetime.timedelta(seconds=HOLD_TTL)
        jobs().update_many({"_id": {"$in": held}}, {"$max": {"dateexpires": until}})


def _depfailed_fields(child: ObjectId, parent: ObjectId, status: str) -> dict[str, Any]:
    now = utcnow()
    ttl = float(get_current_config().get("default_job_ttl") or 0) or 180 * 86400.0
    return {"status": DEPFAILED, "wf_parent": parent, "wf_parent_status": status, "dateupdated": now,
            "dateexpires": now + datetime.timedelta(seconds=ttl), "exceptiontype": "DependencyFailed",
            "traceback": f"Not run: its parent {parent} ended as {status!r}, which its dependency policy does not "
                         "accept. Requeue the parent (or this job) once the cause is fixed: a requeued parent "
                         "re-arms it."}


def queue_released(docs: list[dict[str, Any]]) -> None:
    """Dependents whose parents all ended well: ``waiting`` -> ``queued`` (guarded), then pushed, per queue."""
    if not docs:
        return
    now = utcnow()
    fields = {"status": st.QUEUED, "datequeued": now, "dateupdated": now}
    passing = [d for d in docs if d.get("wf_pass_result")]
    for d in passing:  # chain(..., pass_result=name): the parent's result goes into the params
        ids = [e["parent"] for e in edges().find({"child": d["_id"]}, {"parent": 1}).sort("_id", 1)]
        found = {p["_id"]: p.get("result") for p in jobs().find({"_id": {"$in": ids}}, {"result": 1})}
        value = found.get(ids[0]) if len(ids) == 1 else [found.get(i) for i in ids]
        jobs().update_one({"_id": d["_id"], "status": WAITING},
                          {"$set": dict(fields, **{f"params.{d['wf_pass_result']}": value})})
    ids = [d["_id"] for d in docs if not d.get("wf_pass_result")]
    modified = jobs().update_many({"_id": {"$in": ids}, "status": WAITING}, {"$set": fields}).modified_count \
        if ids else 0
    if passing or modified < len(ids):  # some cancelled meanwhile: push exactly those this call queued
        query = {"_id": {"$in": [d["_id"] for d in docs]}, "status": st.QUEUED, "datequeued": now}
        mine = {d["_id"] for d in jobs().find(query, {"_id": 1})}
        docs = [d for d in docs if d["_id"] in mine]
    groups: dict[tuple[str, str, float], list[ObjectId]] = defaultdict(list)
    for d in docs:
        due = d.get("datedue")
        delay = max(0.0, (due - now).total_seconds()) if due is not None else 0.0
        groups[(d.get("queue") or "default", d.get("path") or "", delay)].append(d["_id"])
    broker, hook = get_broker(), get_plugin_manager().hook
    for (queue, path, delay), group in groups.items():
        broker.push(queue, [str(i) for i in group], delay=delay)
        hook.mrq_jobs_enqueued(queue=queue, path=path, job_ids=group, delay=delay)


def on_requeued(requeued: list[ObjectId]) -> None:
    """Parents queued again (``Job.requeue``, the dashboard): their dependents wait for their new end.

    A dependent still ``waiting`` whose edge from the parent was ``ok`` waits again (its counter goes up). A
    dependent that ended ``depfailed`` because of this parent is ``waiting`` again (unless another of its parents
    also failed it: it then names that one), and so on down the graph: requeueing the failed job of a workflow
    resumes it. Dependents already queued, running or ended otherwise are left alone (they use the old end).
    """
    todo = list(requeued)
    changes: list[tuple[ObjectId, str, dict[str, Any]]] = []
    while todo:
        parents, todo = todo[:_BATCH], todo[_BATCH:]
        for e in edges().find({"parent": {"$in": parents}, "state": {"$in": ["ok", "bad"]}}):
            child = jobs().find_one({"_id": e["child"]}, {"status": 1, "wf_parent": 1})
            if child is None:
                continue
            if child["status"] == WAITING and e["state"] == "ok":
                if edges().update_one({"_id": e["_id"], "state": "ok"}, {"$set": {"state": "w"}}).modified_count:
                    jobs().update_one({"_id": e["child"]}, {"$inc": {"wf_left": 1}})
            elif child["status"] == DEPFAILED and child.get("wf_parent") == e["parent"] and e["state"] == "bad":
                if not edges().update_one({"_id": e["_id"], "state": "bad"},
                                          {"$set": {"state": "w"}}).modified_count:
                    continue
                other = edges().find_one({"child": e["child"], "state": "bad"}, {"parent": 1})
                if other is not None:
                    jobs().update_one({"_id": e["child"], "status": DEPFAILED},
                                      {"$set": {"wf_parent": other["parent"]}})
                    continue
                now = utcnow()
                fields = {"status": WAITING, "dateupdated": now}
                if jobs().update_one({"_id": e["child"], "status": DEPFAILED},
                                     {"$set": fields, "$unset": {"wf_parent": "", "wf_parent_status": "",
                                                                 "traceback": "", "exceptiontype": ""}}
                                     ).modified_count:
                    changes.append((e["child"], WAITING, fields))
                    todo.append(e["child"])
    _report(changes)
