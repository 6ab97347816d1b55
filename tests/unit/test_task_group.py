"""``TaskGroup.close`` ends every task, even one that lost its cancel."""

from __future__ import annotations

import asyncio

import pytest

from tether import tasks
from tether.tasks import TaskGroup


async def test_a_task_that_swallows_its_cancel_is_cancelled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "RECANCEL_S", 0.05)
    rounds: list[int] = []

    async def loop_that_loses_one_cancel() -> None:  # as a loop around a swallowing wait_for behaves
        swallowed = False
        while True:
            rounds.append(1)
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed = True
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    group = TaskGroup("test")
    task = group.spawn(loop_that_loses_one_cancel(), name="loser")
    await asyncio.sleep(0.03)
    await asyncio.wait_for(group.close(), 2.0)
    assert task.cancelled() and len(group) == 0


async def test_clean_up_after_a_cancel_is_not_cut_short() -> None:
    cleaned: list[str] = []

    async def with_clean_up() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.2)  # e.g. a worker's last chunks and report going out
            cleaned.append("done")

    group = TaskGroup("test")
    group.spawn(with_clean_up())
    await asyncio.sleep(0)
    await group.close()
    assert cleaned == ["done"]
