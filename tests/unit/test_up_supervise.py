"""tether up's supervisor: a child that keeps failing at start is restarted with backoff, then given up on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tether import up


class _Exited:
    returncode = 1
    pid = 0

    def poll(self) -> int:
        return 1


def test_fast_exits_back_off_then_give_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spawned: list[float] = []

    def fake_spawn(child: up.Child, env: dict[str, str]) -> None:
        child.proc = _Exited()  # type: ignore[assignment]
        child.started = time.monotonic()
        spawned.append(child.started)

    monkeypatch.setattr(up, "_spawn", fake_spawn)
    child = up.Child("gateway", tmp_path / "gateway.log")
    fake_spawn(child, {})
    delays = []
    with pytest.raises(up.GaveUp, match="gateway exited 5 times"):
        for _ in range(20):
            up._supervise([child], {})  # notices the exit and schedules the restart
            delays.append(child.restart_at - time.monotonic())
            child.restart_at = time.monotonic()  # let time pass
            up._supervise([child], {})  # restarts
    assert len(spawned) == 5  # the first start and four restarts
    assert [round(d) for d in delays] == [1, 2, 4, 8]  # growing backoff between fast exits


def test_a_child_that_ran_a_while_restarts_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(up, "_spawn", lambda child, env: setattr(child, "proc", None))
    child = up.Child("worker", tmp_path / "worker.log", proc=_Exited())  # type: ignore[arg-type]
    child.started = time.monotonic() - up.FAST_EXIT_S - 1
    up._supervise([child], {})
    assert child.restarts == 1 and child.proc is None  # respawned in the same pass
