"""The one transition table."""

from __future__ import annotations

import pytest

from mrq import status as st


def test_final_statuses_cannot_be_overwritten_by_a_job_end():
    for final in st.FINAL_STATUSES:
        for new in (st.SUCCESS, st.FAILED, st.RETRY, st.INTERRUPT, st.STARTED, st.CANCEL):
            assert final not in st.allowed_from(new)


def test_requeue_revives_anything_and_runnable_statuses():
    assert st.allowed_from(st.QUEUED) == st.ALL_STATUSES
    assert st.allowed_from(st.SUCCESS) == st.RUNNABLE_STATUSES == {"queued", "started", "retry", "interrupt"}


def test_unknown_status():
    with pytest.raises(ValueError, match="Unknown job status"):
        st.allowed_from("done")
