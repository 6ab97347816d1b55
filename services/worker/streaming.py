"""Token streaming: each delta becomes a ``ResultChunk`` on ``tether.results.<job>.chunks``.

The engine hands deltas to a plain callback on the event loop, which cannot await a
publish, so chunks go into one ordered outbox that a single task publishes from.
Sequence numbers continue an earlier attempt's (``Dispatch.resume.seq``), so a client
following a job across a re-placement sees one gap-free sequence. ``flush()`` returns
once every chunk queued so far is handed to the NATS client: the worker calls it before
publishing the final result, so chunks always precede the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from nats.aio.client import Client

from schemas import ResultChunk
from services.worker.runtimes.base import Delta
from tether import codec, subjects

log = logging.getLogger(__name__)

_HEADERS = {codec.CONTENT_TYPE: codec.JSON}


class ChunkStream:
    """One attempt's chunks: numbered from ``start_seq``; remembers what it delivered."""

    def __init__(self, publisher: ChunkPublisher, job_id: str, attempt: int, start_seq: int = 0) -> None:
        self._publisher = publisher
        self.job_id = job_id
        self.attempt = attempt
        self.seq = start_seq
        self.subject = subjects.chunks_subject(job_id)
        self.first_at: float | None = None

    def on_delta(self, delta: Delta) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        chunk = ResultChunk(
            job_id=self.job_id,
            seq=self.seq,
            text=delta.text,
            offset=delta.offset,
            token_ids=delta.token_ids,
            attempt=self.attempt,
            worker_id=self._publisher.worker_id,
            ts=time.time(),
        )
        self.seq += 1
        self._publisher.put(self.subject, codec.encode(chunk.wire()))


class ChunkPublisher:
    def __init__(self, nc: Client, worker_id: str) -> None:
        self._nc = nc
        self.worker_id = worker_id
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.published = 0

    def stream(self, job_id: str, attempt: int, start_seq: int = 0) -> ChunkStream:
        return ChunkStream(self, job_id, attempt, start_seq)

    def put(self, subject: str, data: bytes) -> None:
        self._outbox.append((subject, data))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                subject, data = self._outbox.popleft()
                with contextlib.suppress(Exception):  # chunks are best effort; the result is not
                    await self._nc.publish(subject, data, headers=_HEADERS)
                    self.published += 1
            self._idle.set()

    async def flush(self) -> None:
        """Until every chunk queued so far has been handed to the NATS client."""
        await self._idle.wait()
