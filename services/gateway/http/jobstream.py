"""One streamed job: token chunks in sequence order, then the one final reply.

``JobStream.start()`` runs ``Gateway.infer`` (the same admission and submit path as every
request) and, in its ``on_job`` hook, subscribes to ``tether.results.<job>.chunks``
*before* the job is published, so no chunk can be missed. ``events()`` yields ``Chunk``s
in ``seq`` order (late duplicates dropped, early ones held back) and ends with the
``InferReply``. When the final result arrives the chunks that preceded it are already
queued (one connection, one socket order; the subscription feeds an ``asyncio.Queue``,
whose ``get`` can be cancelled without losing an item), so they are drained first;
whatever the chunks did not cover (a model that streams nothing, like echo, or a chunk
lost on core NATS) is sent as one last chunk taken from the final text. A client that
goes away mid-stream gets its job cancelled (``hangup.cancel_abandoned``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import InferReply, InferRequest, ResultChunk
from services.gateway.http.hangup import cancel_abandoned
from services.gateway.service import Gateway
from tether import codec, subjects
from tether.chunks import Reorder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chunk:
    job_id: str
    seq: int
    text: str


class JobStream:
    def __init__(self, gateway: Gateway, req: InferRequest, headers: dict[str, str]) -> None:
        self.gateway = gateway
        self.req = req
        self.headers = headers
        self.job_id: str | None = None
        self.created = int(time.time())
        self.done = False
        self.diverged = False  # the streamed text is not a prefix of the final text (see Reorder.diverged)
        self._sub: Subscription | None = None
        self._chunks: asyncio.Queue[Msg] = asyncio.Queue()  # fed by the subscription, in socket order
        self._started = asyncio.Event()
        self._task: asyncio.Task[InferReply] | None = None

    async def _on_job(self, job_id: str) -> None:
        assert self.gateway.nc is not None
        self.job_id = job_id
        self._sub = await self.gateway.nc.subscribe(subjects.chunks_subject(job_id), cb=self._on_chunk)
        self._started.set()

    async def _on_chunk(self, msg: Msg) -> None:
        self._chunks.put_nowait(msg)

    async def start(self) -> str:
        """Admit and enqueue the job; raises the ``TetherError`` that refused it before queueing."""
        self._task = asyncio.create_task(self.gateway.infer(self.req, self.headers, on_job=self._on_job))
        started = asyncio.create_task(self._started.wait())
        try:
            await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if not self._started.is_set():
            self._task.result()  # raises the refusal
            raise RuntimeError("the job finished before it started")  # unreachable: on_job runs first
        assert self.job_id is not None
        return self.job_id

    async def events(self) -> AsyncIterator[Chunk | InferReply]:
        """Chunks in order, then the final reply (a final error is raised as its ``TetherError``)."""
        assert self._task is not None and self._sub is not None and self.job_id is not None
        order = Reorder()
        while True:
            nxt = asyncio.create_task(self._chunks.get())
            try:
                await asyncio.wait({nxt, self._task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not nxt.done():  # cancelling a Queue.get never loses an item
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await nxt
            if nxt.cancelled():
                break
            for seq, text in self._push(order, nxt.result()):
                yield Chunk(self.job_id, seq, text)
        # chunks that arrived before the final result: queued here or still on the subscription
        while not self._chunks.empty() or self._sub.pending_msgs > 0:
            for seq, text in self._push(order, await asyncio.wait_for(self._chunks.get(), 1.0)):
                yield Chunk(self.job_id, seq, text)
        reply = await self._task  # raises a final error
        self.diverged = order.diverged(reply.result)
        rest = order.remainder(reply.result)
        if rest:
            yield Chunk(self.job_id, order.next_seq, rest)
        self.done = True
        yield reply

    def _push(self, order: Reorder, msg: Any) -> list[tuple[int, str]]:
        try:
            chunk = ResultChunk.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
        except Exception:
            log.warning("malformed chunk ignored", extra={"job": self.job_id})
            return []
        tokens = len(chunk.token_ids) if chunk.token_ids is not None else None
        return order.push(chunk.seq, chunk.text, attempt=chunk.attempt, offset=chunk.offset, tokens=tokens)

    async def close(self) -> None:
        """Unsubscribe; if the job has not finished and nobody else wants it, cancel it (the client
        went away; ``hangup.cancel_abandoned`` says who else may want it)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.job_id is not None and not self.done:
            await cancel_abandoned(self.gateway, self.req, self.job_id)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
