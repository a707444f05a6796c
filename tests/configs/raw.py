"""mrq-config.py of the raw-queue tests: one raw queue of each kind, on the tasks of tests/tasks/general.py."""

import json

T = "tests.tasks.general."


def _record(payload):
    params = json.loads(payload)
    return {"path": T + params.pop("task", "Record"), "params": params}


RAW_QUEUES = {
    # Nothing stored on success: the fast path.
    "fast_raw": {"job_factory": _record, "statuses_no_storage": ("started", "success"), "retry_queue": "retries"},
    # Interrupted jobs stored nowhere either: they go back into the raw queue.
    "quiet_raw": {"job_factory": _record, "statuses_no_storage": ("started", "success", "interrupt")},
    # Everything stored, as the original MRQ's default.
    "kept_raw": {"job_factory": _record, "retry_queue": "retries"},
    "uniq_set": {"job_factory": _record, "statuses_no_storage": ("started", "success")},
    "prio_sorted_set": {"job_factory": _record, "statuses_no_storage": ("started", "success")},
    "later_timed_set": {"job_factory": _record, "statuses_no_storage": ("started", "success")},
    "again_timed_set": {"job_factory": _record, "statuses_no_storage": ("started", "success"),
                        "pushback_seconds": 1},
    "broken_raw": {"job_factory": lambda payload: {"params": {}}},
    # Jobs of a task limited to one at a time (Limited), one raw queue of each kind.
    "limited_raw": {"job_factory": _record, "statuses_no_storage": ("started", "success")},
    "limited_set": {"job_factory": _record, "statuses_no_storage": ("started", "success")},
    "limited_sorted_set": {"job_factory": _record, "statuses_no_storage": ("started", "success")},
    "limited_timed_set": {"job_factory": _record, "statuses_no_storage": ("started", "success")},
}
