"""The Python API of workflows: groups with a callback, chains, children added at run time, reading parents'
results, cancelling a workflow."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from bson import ObjectId
from mrq.actions import cancel_jobs
from mrq.context import get_current_job
from mrq.exceptions import InvalidParams, MRQError
from mrq.job import queue_job

from mrq_workflows import graph
from mrq_workflows.graph import WAITING, edges, jobs, parent_ids

__all__ = ["Group", "group", "chain", "wait_for", "parents", "dependents", "results", "workflow_ids",
           "cancel_workflow"]

#: Largest workflow :func:`workflow_ids` walks (and :func:`wait_for` checks for cycles).
MAX_WALK = 1_000_000


class Group:
    """Jobs already queued, seen as one: :meth:`then` queues a callback that waits for all of them."""

    def __init__(self, job_ids: Iterable[Any]) -> None:
        self.ids = parent_ids(list(job_ids))
        if not self.ids:
            raise InvalidParams("group() needs at least one job id.")

    def then(self, path: str, params: Mapping[str, Any] | None = None, policy: str = "success",
             queue: str | None = None) -> ObjectId:
        """Queue ``path`` with ``params`` to run once every member ended (under ``policy``: ``success``,
        ``ended`` or ``not_failed``). The callback reads its members with :func:`parents` and their results with
        :func:`results` (its params stay small, whatever the group's size)."""
        return queue_job(path, dict(params or {}), queue=queue, depends_on=self.ids, depends_policy=policy)


def group(job_ids: Iterable[Any]) -> Group:
    """``group(ids).then("tasks.Index", {...})``: a callback after every member ended."""
    return Group(job_ids)


def chain(*jobs_: tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], str | None],
          pass_result: str | None = None, policy: str = "success") -> list[ObjectId]:
    """Queue ``(path, params)`` (or ``(path, params, queue)``) jobs that run one after the other: each once the
    previous one succeeded (``policy``). With ``pass_result="name"``, each job after the first gets the
    previous one's result in ``params[name]`` when it is queued. Returns their ids, in order."""
    if not jobs_:
        raise InvalidParams("chain() needs at least one (path, params) job.")
    graph.check_policy(policy)
    ids: list[ObjectId] = []
    for n, spec in enumerate(jobs_):
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise InvalidParams(f"chain() job #{n} must be a (path, params) or (path, params, queue) tuple, not "
                                f"{spec!r:.80}.")
        path, params, queue = (spec + (None,))[:3] if len(spec) == 2 else spec  # type: ignore[misc]
        if not ids:
            ids.append(queue_job(path, params, queue=queue))
            continue
        options: dict[str, Any] = {"depends_on": [ids[-1]], "depends_policy": policy}
        if pass_result:
            options["depends_pass_result"] = pass_result
        ids.append(queue_job(path, params, queue=queue, **options))
    return ids


def _walk(start: Sequence[ObjectId], down: bool, up: bool, limit: int = MAX_WALK) -> set[ObjectId]:
    seen = set(start)
    frontier = list(start)
    while frontier:
        batch, frontier = frontier[:1000], frontier[1000:]
        found: list[ObjectId] = []
        if down:
            found += [e["child"] for e in edges().find({"parent": {"$in": batch}}, {"child": 1})]
        if up:
            found += [e["parent"] for e in edges().find({"child": {"$in": batch}}, {"parent": 1})]
        for i in found:
            if i not in seen:
                seen.add(i)
                frontier.append(i)
        if len(seen) > limit:
            raise MRQError(f"The workflow has more than {limit} jobs: not walked.")
    return seen


def wait_for(job_ids: Iterable[Any]) -> int:
    """Inside a running job: make the jobs waiting for it wait for ``job_ids`` too (children it queued, found
    at run time), with the same policy. Returns the number of dependents that now also wait for them.

    :raises InvalidParams: outside a job, a missing id, or a cycle (one of ``job_ids`` is this job or waits,
        directly or not, for it).
    """
    job = get_current_job()
    if job is None or job.id is None:
        raise InvalidParams("wait_for() is called inside a running task: there is no current job here.")
    children = parent_ids(list(job_ids))
    if not children:
        return 0
    descendants = _walk([job.id], down=True, up=False)
    loop = next((c for c in children if c in descendants), None)
    if loop is not None:
        raise InvalidParams(f"wait_for: job {loop} is this job or one of its dependents: its dependents would wait "
                            "for themselves (a cycle). Pass the ids of new jobs (children it queued).")
    ancestors = _walk(children, down=False, up=True)
    if ancestors & (descendants - {job.id}):
        raise InvalidParams("wait_for: these jobs wait (through depends_on) for a dependent of this job: a cycle.")
    found = {d["_id"] for d in jobs().find({"_id": {"$in": children}}, {"_id": 1})}
    missing = [c for c in children if c not in found]
    if missing:
        raise InvalidParams(f"wait_for: no job with id {missing[0]}: queue the children first.")
    count = 0
    for e in list(edges().find({"parent": job.id, "state": "w"}, {"child": 1, "policy": 1})):
        res = jobs().update_one({"_id": e["child"], "status": WAITING}, {"$inc": {"wf_left": len(children)}})
        if res.modified_count:
            graph.insert_edges([e["child"]], children, e.get("policy", "success"))
            count += 1
    ended = graph.ended_statuses(children)
    if ended and count:
        with graph._Busy():
            graph.on_ended(ended)
    return count


def parents(job_id: Any = None) -> list[ObjectId]:
    """The ids of the jobs ``job_id`` (default: the current job) waits or waited for."""
    return [e["parent"] for e in edges().find({"child": _job_id(job_id)}, {"parent": 1})]


def dependents(job_id: Any = None) -> list[ObjectId]:
    """The ids of the jobs waiting or having waited for ``job_id`` (default: the current job)."""
    return [e["child"] for e in edges().find({"parent": _job_id(job_id)}, {"child": 1})]


def results(job_id: Any = None) -> Iterator[dict[str, Any]]:
    """``{"_id", "status", "result"}`` of each parent of ``job_id`` (default: the current job), read 1000 at a
    time: a callback of a 100,000-job group iterates over them without holding them all."""
    ids = parents(job_id)
    for i in range(0, len(ids), 1000):
        yield from jobs().find({"_id": {"$in": ids[i:i + 1000]}}, {"status": 1, "result": 1})


def workflow_ids(job_id: Any) -> set[ObjectId]:
    """Every job connected to ``job_id`` by dependencies (its parents, dependents, their parents...)."""
    return _walk([_job_id(job_id)], down=True, up=True)


def cancel_workflow(job_id: Any) -> int:
    """Cancel every job of the workflow of ``job_id`` that has not ended (waiting, queued, running; running ones
    are stopped). Returns how many were cancelled."""
    ids = sorted(workflow_ids(job_id))
    cancelled = 0
    for i in range(0, len(ids), 1000):
        cancelled += cancel_jobs({"id": ids[i:i + 1000]})["cancelled"]
    return cancelled


def _job_id(job_id: Any) -> ObjectId:
    if job_id is None:
        job = get_current_job()
        if job is None or job.id is None:
            raise InvalidParams("No job id given and no current job.")
        return job.id
    return parent_ids([job_id])[0]
