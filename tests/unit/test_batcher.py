"""The group-commit batcher's failure rules, with a stand-in backend that scripts each transaction's fate.

(The store contract suite runs the batcher against real SQLite; these cover the failures SQLite
cannot be made to produce on demand: a transaction that may have committed, one still in flight.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tether.errors import StoreError
from tether.store.backend import StatementFailed, Stmt, StmtResult
from tether.store.batcher import WriteBatcher


class Scripted:
    """Runs transactions by the script: an exception to raise, or a delay before succeeding."""

    def __init__(self, *fates: BaseException | float) -> None:
        self.fates = list(fates)
        self.calls: list[list[str]] = []

    async def transaction(self, statements: Sequence[Stmt]) -> list[StmtResult]:
        self.calls.append([st.sql for st in statements])
        fate = self.fates.pop(0) if self.fates else 0.0
        if isinstance(fate, BaseException):
            raise fate
        await asyncio.sleep(fate)
        return [StmtResult(rowcount=1) for _ in statements]


async def _three(batcher: WriteBatcher) -> list[object]:
    return await asyncio.gather(
        *(batcher.submit([Stmt(f"op{i}")]) for i in range(3)), return_exceptions=True
    )


async def test_a_failure_that_may_have_committed_fails_the_batch_without_replaying_it() -> None:
    backend = Scripted(StoreError("timed out waiting for the leader's reply"))
    batcher = WriteBatcher(backend)  # type: ignore[arg-type]
    batcher.start()
    results = await _three(batcher)
    assert all(isinstance(r, StoreError) and "timed out" in str(r) for r in results), results
    assert backend.calls == [["op0", "op1", "op2"]]  # once: a replay could apply a committed write twice
    await batcher.close()


async def test_a_failed_statement_is_found_by_retrying_the_operations_one_by_one() -> None:
    backend = Scripted(StatementFailed("no such table"), 0.0, StatementFailed("no such table"), 0.0)
    batcher = WriteBatcher(backend)  # type: ignore[arg-type]
    batcher.start()
    results = await _three(batcher)
    assert isinstance(results[1], StatementFailed)
    assert [type(r) for r in (results[0], results[2])] == [list, list]
    assert backend.calls == [["op0", "op1", "op2"], ["op0"], ["op1"], ["op2"]]
    await batcher.close()


async def test_close_lets_the_write_in_flight_and_the_queued_ones_finish() -> None:
    backend = Scripted(0.3, 0.3)
    batcher = WriteBatcher(backend)  # type: ignore[arg-type]
    batcher.start()
    first = asyncio.create_task(batcher.submit([Stmt("in-flight")]))
    await asyncio.sleep(0.05)  # now inside the slow transaction
    queued = asyncio.create_task(batcher.submit([Stmt("queued")]))
    await asyncio.sleep(0)
    await asyncio.wait_for(batcher.close(), 5)
    assert [len(r) for r in await asyncio.wait_for(asyncio.gather(first, queued), 5)] == [1, 1]
    assert backend.calls == [["in-flight"], ["queued"]]
    with pytest.raises(StoreError, match="not running"):
        await batcher.submit([Stmt("after close")])


async def test_a_cancelled_flusher_leaves_no_caller_waiting() -> None:
    backend = Scripted(10.0)
    batcher = WriteBatcher(backend)  # type: ignore[arg-type]
    batcher.start()
    in_flight = asyncio.create_task(batcher.submit([Stmt("slow")]))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(batcher.submit([Stmt("queued")]))
    await asyncio.sleep(0)
    assert batcher._task is not None
    batcher._task.cancel()
    results = await asyncio.wait_for(asyncio.gather(in_flight, queued, return_exceptions=True), 5)
    assert all(isinstance(r, StoreError) for r in results), results
