"""Embedding requests batched like generation: concurrent requests share one forward pass.

Requests wait at most ``max_wait_s`` (or until ``max_texts`` texts are queued) and are
encoded together on the runtime's thread; each request gets its own rows back. Padding
is masked out of the mean pooling, so a text's vector does not depend on its neighbours.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from services.worker.runtimes.base import RunResult
from tether.tasks import TaskGroup

DEFAULT_MAX_TEXTS = 64
DEFAULT_MAX_WAIT_S = 0.002


@dataclass(slots=True)
class _Pending:
    texts: list[str]
    single: bool
    normalize: bool
    future: asyncio.Future[RunResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EmbeddingBatcher:
    """Collects embedding requests on the event loop and runs them in shared batches."""

    def __init__(
        self,
        pooled: Any,
        *,
        call: Any,
        max_texts: int = DEFAULT_MAX_TEXTS,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        name: str = "embed",
    ) -> None:
        """``pooled(texts, normalize=...)`` returns (vectors, token counts); ``call(fn, *args)`` runs it off the loop."""
        self._pooled = pooled
        self._call = call
        self.max_texts = max_texts
        self.max_wait_s = max_wait_s
        self._pending: list[_Pending] = []
        self._tasks = TaskGroup(f"{name}-batcher")
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def embed(self, texts: list[str], *, single: bool, normalize: bool) -> RunResult:
        if not texts:
            return RunResult(output=[], tokens_in=0)
        item = _Pending(texts, single, normalize)
        self._pending.append(item)
        if self._runner is None or self._runner.done():
            self._runner = self._tasks.spawn(self._run(), name="embed-batches")
        return await item.future

    async def _run(self) -> None:
        while self._pending:
            if sum(len(p.texts) for p in self._pending) < self.max_texts:
                await asyncio.sleep(self.max_wait_s)
            batch, count = [], 0
            while self._pending and (not batch or count + len(self._pending[0].texts) <= self.max_texts):
                item = self._pending.pop(0)
                batch.append(item)
                count += len(item.texts)
            await self._run_batch([p for p in batch if not p.future.done()])

    async def _run_batch(self, batch: list[_Pending]) -> None:
        for normalize in (True, False):
            group = [p for p in batch if p.normalize is normalize]
            if not group:
                continue
            texts = [t for p in group for t in p.texts]
            try:
                vectors, counts = await self._call(self._rows, texts, normalize)
            except Exception as exc:
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.batches += 1
            start = 0
            for p in group:
                end = start + len(p.texts)
                rows = vectors[start:end]
                out = RunResult(output=rows[0] if p.single else rows, tokens_in=sum(counts[start:end]))
                start = end
                if not p.future.done():
                    p.future.set_result(out)

    def _rows(self, texts: list[str], normalize: bool) -> tuple[list[list[float]], list[int]]:
        pooled, counts = self._pooled(texts, normalize=normalize)
        return pooled.float().cpu().tolist(), counts

    async def close(self) -> None:
        await self._tasks.close()
        for p in self._pending:
            if not p.future.done():
                p.future.cancel()
        self._pending.clear()
