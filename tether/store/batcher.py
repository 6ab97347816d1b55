"""Group-commit: many small write operations share one transaction.

Callers ``await submit(statements)``; a single flusher task takes everything
queued so far (up to ``max_ops``) and runs it as one backend transaction, so
under load the per-job cost of a commit shrinks with the batch. No artificial
delay is added: while one transaction runs, the next batch gathers. If a batch
fails, each operation is retried alone so one bad operation fails only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from tether.errors import StoreError
from tether.store.backend import SqlBackend, Stmt, StmtResult

log = logging.getLogger(__name__)

_Op = tuple[list[Stmt], asyncio.Future[list[StmtResult]]]


class WriteBatcher:
    def __init__(self, backend: SqlBackend, *, max_ops: int = 512) -> None:
        self._backend = backend
        self._max_ops = max_ops
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.ops = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-batcher")

    async def submit(self, statements: Sequence[Stmt]) -> list[StmtResult]:
        if self._task is None or self._task.done():
            raise StoreError("store batcher is not running")
        fut: asyncio.Future[list[StmtResult]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((list(statements), fut))
        return await fut

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        if self._task is None:
            return
        while not self._queue.empty():
            await asyncio.sleep(0.005)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            ops = [await self._queue.get()]
            while len(ops) < self._max_ops and not self._queue.empty():
                ops.append(self._queue.get_nowait())
            await self._flush(ops)

    async def _flush(self, ops: list[_Op]) -> None:
        self.batches += 1
        self.ops += len(ops)
        flat = [st for stmts, _ in ops for st in stmts]
        try:
            results = await self._backend.transaction(flat)
        except Exception as exc:
            if len(ops) == 1:
                _settle(ops[0][1], exc=exc)
                return
            log.warning(
                "batched transaction failed; retrying its operations one by one", extra={"error": str(exc)}
            )
            for op in ops:
                await self._flush([op])
            return
        i = 0
        for stmts, fut in ops:
            _settle(fut, result=results[i : i + len(stmts)])
            i += len(stmts)


def _settle(
    fut: asyncio.Future[list[StmtResult]],
    *,
    result: list[StmtResult] | None = None,
    exc: Exception | None = None,
) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc if isinstance(exc, StoreError) else StoreError(str(exc)))
    else:
        fut.set_result(result or [])
