"""Group-commit: many small write operations share one transaction.

Callers ``await submit(statements)``; a single flusher task takes everything
queued so far (up to ``max_ops``) and runs it as one backend transaction, so
under load the per-job cost of a commit shrinks with the batch. No artificial
delay is added: while one transaction runs, the next batch gathers.

If a statement fails (``StatementFailed``: the transaction rolled back), each
operation is retried alone so one bad operation fails only itself. Any other
failure (a timeout or a lost reply, after which the transaction may have
committed; a locked or unreachable store) fails every operation of the batch
without replaying any: replaying a committed reserve would count its attempt
twice. ``close()`` flushes what is queued, lets the batch in flight finish, and
fails anything left, so no caller waits forever.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from tether.errors import StoreError
from tether.store.backend import SqlBackend, StatementFailed, Stmt, StmtResult

_Op = tuple[list[Stmt], asyncio.Future[list[StmtResult]]]
_STOP = None  # queued by close(): flush what came before it, then stop


class WriteBatcher:
    def __init__(self, backend: SqlBackend, *, max_ops: int = 512) -> None:
        self._backend = backend
        self._max_ops = max_ops
        # A deque and one wake-up future, not an asyncio.Queue: every job submits twice, and the
        # queue's put and get (with their waiter bookkeeping) cost more than the deque's append.
        self._queue: deque[_Op | None] = deque()
        self._wake: asyncio.Future[None] | None = None
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
        self._put((list(statements), fut))
        return await fut

    def _put(self, op: _Op | None) -> None:
        self._queue.append(op)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        task, self._task = self._task, None  # new submits fail from now on
        if task is None:
            return
        self._put(_STOP)
        await asyncio.shield(task)

    async def _run(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not queue:
                    self._wake = loop.create_future()
                    try:
                        await self._wake
                    finally:
                        self._wake = None
                    continue
                first = queue.popleft()
                if first is _STOP:
                    return
                ops, stop = [first], False
                while len(ops) < self._max_ops and queue:
                    op = queue.popleft()
                    if op is _STOP:
                        stop = True
                        break
                    ops.append(op)
                await self._flush(ops)
                if stop:
                    return
        finally:  # stopped, cancelled or crashed: nobody is left waiting
            while queue:
                op = queue.popleft()
                if op is not _STOP:
                    _settle(op[1], exc=StoreError("store closed before this write ran"))

    async def _flush(self, ops: list[_Op]) -> None:
        self.batches += 1
        self.ops += len(ops)
        flat = [st for stmts, _ in ops for st in stmts]
        try:
            results = await self._backend.transaction(flat)
        except StatementFailed as exc:
            if len(ops) == 1:
                _settle(ops[0][1], exc=exc)
                return
            for op in ops:  # rolled back: find the bad one, the others go through
                await self._flush([op])
            return
        except Exception as exc:  # it may have committed: fail them all, replay none
            for _, fut in ops:
                _settle(fut, exc=exc)
            return
        except BaseException:  # cancelled mid-write
            for _, fut in ops:
                _settle(fut, exc=StoreError("store closed during this write"))
            raise
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
