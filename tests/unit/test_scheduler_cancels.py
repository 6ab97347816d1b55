"""The scheduler's job-wide cancels: kept while a job can wait, attempt cancels ignored, bounded."""

from __future__ import annotations

import time

import pytest

from schemas import CancelRequest
from services.scheduler import cancels
from services.scheduler.cancels import JobCancels
from tether import expiring


def test_a_job_wide_cancel_is_kept_and_an_attempt_cancel_is_not() -> None:
    board = JobCancels(keep_s=60.0)
    assert board.reason_for("j-1") is None
    board.add(CancelRequest(job_id="j-1", reason="client disconnected"))
    board.add(CancelRequest(job_id="j-2", attempt=1, reason="re-placed"))  # one attempt only: not the job
    assert board.reason_for("j-1") == "client disconnected"
    assert board.reason_for("j-2") is None


def test_cancels_expire_after_the_longest_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [time.monotonic()]
    monkeypatch.setattr(expiring.time, "monotonic", lambda: now[0])
    board = JobCancels(keep_s=10.0)
    board.add(CancelRequest(job_id="old"))
    now[0] += 5
    board.add(CancelRequest(job_id="new"))
    now[0] += 6  # "old" is 11 s old, "new" 6 s
    assert board.reason_for("old") is None and board.reason_for("new") == "cancelled by client"


def test_kept_cancels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cancels, "MAX_KEPT", 3)
    board = JobCancels(keep_s=60.0)
    for i in range(5):
        board.add(CancelRequest(job_id=f"j-{i}"))
    assert [board.reason_for(f"j-{i}") is not None for i in range(5)] == [False, False, True, True, True]
