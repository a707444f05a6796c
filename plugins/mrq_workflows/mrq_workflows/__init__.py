"""MRQ workflows: jobs that wait for other jobs (``queue_job(..., depends_on=[ids])``), groups with callbacks,
chains, children added at run time, and durable steps. Enable with ``--plugins workflows``."""

from __future__ import annotations

from mrq_workflows.api import (
    Group,
    cancel_workflow,
    chain,
    dependents,
    group,
    parents,
    results,
    wait_for,
    workflow_ids,
)
from mrq_workflows.graph import DEPFAILED, FAILURES, POLICIES, WAITING
from mrq_workflows.steps import Step, step

__version__ = "0.1.0"
__all__ = ["DEPFAILED", "FAILURES", "POLICIES", "WAITING", "Group", "Step", "cancel_workflow", "chain",
           "dependents", "group", "parents", "results", "step", "wait_for", "workflow_ids"]
