"""The hooks of the workflows plugin (``--plugins workflows``): statuses, ``depends_on``, resolution of ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson import ObjectId
from mrq import status as st
from mrq.exceptions import InvalidParams
from mrq.hookspecs import hookimpl

from mrq_workflows import graph
from mrq_workflows.graph import DEPFAILED, WAITING


@hookimpl
def mrq_job_statuses() -> list[dict[str, str]]:
    return [{"name": WAITING, "kind": "waiting"}, {"name": DEPFAILED, "kind": "final"}]


@hookimpl
def mrq_jobs_enqueuing(path: str, queue: str, docs: list[dict[str, Any]], options: dict[str, Any]
                       ) -> Callable[[list[ObjectId]], None] | None:
    """``depends_on=[ids]`` (and ``depends_policy=``): the jobs wait, with their own status, for their parents."""
    if "depends_on" not in options:
        if "depends_policy" in options:
            raise InvalidParams("depends_policy= was given without depends_on=[job ids].")
        return None
    parents = graph.parent_ids(options.pop("depends_on"))
    policy = graph.check_policy(options.pop("depends_policy", "success"))
    pass_result = options.pop("depends_pass_result", None)
    if pass_result is not None and (not isinstance(pass_result, str) or not pass_result.isidentifier()):
        raise InvalidParams(f"depends_pass_result={pass_result!r:.60}: give the name of the param (an identifier) "
                            "that receives the parent's result.")
    if not parents:
        return None
    own = {d["_id"] for d in docs} & set(parents)
    if own:
        raise InvalidParams(f"Job {own.pop()} would depend on itself (depends_on names its own id): a cycle. "
                            "A job can only wait for other jobs.")
    found: set[ObjectId] = set()
    for i in range(0, len(parents), 1000):
        found.update(d["_id"] for d in graph.jobs().find({"_id": {"$in": parents[i:i + 1000]}}, {"_id": 1}))
    missing = [p for p in parents if p not in found]
    if missing:
        raise InvalidParams(f"depends_on: no job with id {missing[0]} ({len(missing)} missing of {len(parents)}): "
                            "a parent must exist (queued before its dependents, not expired nor deleted). Queue the "
                            "parent first and pass the id queue_job returned.")
    for d in docs:
        d["status"] = WAITING
        d["wf_left"] = len(parents)
        d["wf_policy"] = policy
        if pass_result:
            d["wf_pass_result"] = pass_result

    def after(created: list[ObjectId]) -> None:
        if not created:
            return
        graph.insert_edges(created, parents, policy)
        ended = graph.ended_statuses(parents)  # parents that ended before (or while) the edges were written
        if ended:
            with graph._Busy():
                graph.on_ended(ended)
    return after


@hookimpl
def mrq_jobs_status_changed(changes: list[tuple[ObjectId, str, dict[str, Any]]]) -> None:
    if graph.busy():
        return
    final = st.FINAL_STATUSES
    ended = {job_id: status for job_id, status, _ in changes if status in final}
    requeued = [job_id for job_id, status, _ in changes if status == st.QUEUED]
    with graph._Busy():
        if ended:
            graph.on_ended(ended)
        if requeued:
            graph.on_requeued(requeued)


@hookimpl
def mrq_worker_start(worker: Any) -> None:
    graph.ensure_indexes()


@hookimpl
def mrq_worker_job_fields(worker: Any) -> list[str]:
    return ["wf_steps"]  # durable steps already done, read with the batch's documents (no extra round trip)
