"""Finding tasks by path and merging their settings."""

from __future__ import annotations

import pytest

from mrq.exceptions import ConfigError, TaskNotFound
from mrq.task import Task, load_task, task_settings

T = "tests.tasks.general."
DEFAULTS = {"default_job_timeout": 100, "default_job_max_retries": 3, "default_job_retry_delay": 3,
            "default_job_retry_backoff": 2, "default_job_retry_max_delay": 60, "default_job_result_ttl": 10,
            "default_job_abort_ttl": 10, "default_job_cancel_ttl": 10, "default_job_ttl": 10}


T_NOT_A_TASK = 1


def test_load_class_and_function():
    assert isinstance(load_task(T + "Add"), Task)
    assert load_task(T + "add").run({"a": 1, "b": 2}) == 3


@pytest.mark.parametrize("path, message", [
    ("nodot", "not a dotted path"),
    ("no_such_module_xyz.Task", "could not be imported"),
    (T + "Missing", "has no 'Missing'"),
    ("tests.test_task.T_NOT_A_TASK", "neither a mrq.task.Task subclass nor a function"),
])
def test_task_not_found(path, message):
    with pytest.raises(TaskNotFound, match=message):
        load_task(path)


def test_settings_precedence():
    s = task_settings(T + "RetryOn", DEFAULTS)
    assert (s.max_retries, s.retry_delay, s.retry_on) == (2, 0.2, (ConnectionError,))  # class attributes
    assert s.timeout == 100 and s.queue == "default"
    config = dict(DEFAULTS, tasks={T + "RetryOn": {"max_retries": 7, "queue": "q", "retry_on": ["KeyError"]}})
    s = task_settings(T + "RetryOn", config)
    assert (s.max_retries, s.queue, s.retry_on) == (7, "q", (KeyError,))  # TASKS wins
    assert task_settings(T + "Concurrent", DEFAULTS).max_concurrency == 2
    assert task_settings(T + "Configured", DEFAULTS).timeout == 42  # a class attribute


def test_every_setting_is_read_from_tasks():
    entry = {"queue": "q", "timeout": 5, "max_retries": 7, "retry_delay": 1.5, "retry_backoff": 3,
             "retry_max_delay": 9, "retry_on": ["KeyError"], "max_concurrency": 4, "result_ttl": 11,
             "abort_ttl": 12, "cancel_ttl": 13, "default_ttl": 14}
    for path in (T + "Configured", T + "add", "not.importable.Task"):
        s = task_settings(path, dict(DEFAULTS, tasks={path: entry}))
        assert {key: getattr(s, key) for key in entry} == dict(entry, retry_on=(KeyError,)), path


def test_bad_retry_on():
    with pytest.raises(ConfigError, match="retry_on"):
        task_settings(T + "Add", dict(DEFAULTS, tasks={T + "Add": {"retry_on": ["not.AnException"]}}))


def test_a_huge_retry_count_uses_the_max_delay():
    """retry_backoff ** retry_count overflows a float past ~1000 retries: the retry_max_delay cap applies."""
    from mrq.exceptions import RetryInterrupt
    from mrq.job import Job
    from mrq.task import task_settings

    job = Job(None, {"path": "x.y", "retry_count": 5000})
    job.settings = task_settings("x.y", dict(DEFAULTS, default_job_max_retries=10_000), load=False)
    outcome = job._outcome_of(RetryInterrupt())
    assert outcome.status == "retry" and outcome.delayed is not None
