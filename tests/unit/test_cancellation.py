"""CancelBoard: per-attempt cancels, and cancels that overtake their job."""

from __future__ import annotations

import pytest

from schemas import CancelRequest
from services.worker import cancellation
from services.worker.cancellation import CancelBoard
from tether import expiring


def test_a_cancel_for_one_attempt_leaves_the_others_running() -> None:
    board = CancelBoard()
    first, second = board.register("j", 1), board.register("j", 2)
    assert board.cancel(CancelRequest(job_id="j", attempt=1, reason="re-placed"))
    assert first.cancelled and not second.cancelled
    assert board.cancel(CancelRequest(job_id="j", reason="client gone"))  # no attempt: every one
    assert second.cancelled


def test_a_cancel_that_overtakes_its_dispatch_applies_when_the_job_registers() -> None:
    board = CancelBoard()
    assert not board.cancel(CancelRequest(job_id="j", attempt=1, reason="re-placed: no ack"))
    other = board.register("j", 2)
    assert not other.cancelled  # another attempt is not affected
    token = board.register("j", 1)
    assert token.cancelled and board.cancelled == 1


def test_early_cancels_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cancellation, "EARLY_MAX", 3)
    board = CancelBoard()
    for i in range(5):
        board.cancel(CancelRequest(job_id=f"j{i}"))
    assert not board.register("j0", 1).cancelled  # dropped as the oldest past the bound
    assert board.register("j4", 1).cancelled
    now = expiring.time.monotonic()
    monkeypatch.setattr(expiring.time, "monotonic", lambda: now + cancellation.EARLY_TTL_S + 1)
    assert not board.register("j3", 1).cancelled  # expired


def test_release_forgets_only_that_attempt() -> None:
    board = CancelBoard()
    board.register("j", 1)
    second = board.register("j", 2)
    board.release("j", 1)
    assert board.cancel(CancelRequest(job_id="j", attempt=2)) and second.cancelled
    board.release("j", 2)
    assert not board.cancel(CancelRequest(job_id="j", attempt=2))


def test_an_early_cancel_with_an_empty_reason_still_applies() -> None:
    board = CancelBoard()
    board.cancel(CancelRequest(job_id="j", reason=""))
    assert board.register("j", 2).cancelled
