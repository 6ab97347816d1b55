"""Rejection logging: once per offender per minute, and a cap on lines per minute."""

from __future__ import annotations

import logging

import pytest

from tether.envelope import EnvelopeRejected
from tether.signed import RejectionLog


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_logged_once_per_offender_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RejectionLog(clock=clock)
    err = EnvelopeRejected("bad_signature", "x")
    with caplog.at_level(logging.WARNING, logger="tether.signed"):
        assert rl.note("key-a", err) is True
        assert rl.note("key-a", err) is False
        assert rl.note("key-b", err) is True
        clock.t += 59.0
        assert rl.note("key-a", err) is False
        clock.t += 2.0
        assert rl.note("key-a", err) is True
    lines = [r for r in caplog.records if r.getMessage() == "signed message rejected"]
    assert [r.offender for r in lines] == ["key-a", "key-b", "key-a"]  # type: ignore[attr-defined]
    summary = [r for r in caplog.records if "not logged one by one" in r.getMessage()]
    assert summary and summary[0].bad_signature == 2  # type: ignore[attr-defined]


def test_lines_per_minute_capped_across_offenders() -> None:
    clock = Clock()
    rl = RejectionLog(clock=clock, max_lines=10)
    err = EnvelopeRejected("unknown_key", "x")
    logged = sum(rl.note(f"key-{i}", err) for i in range(5000))
    assert logged == 10
    clock.t += 61.0
    assert rl.note("key-4999", err) is True
