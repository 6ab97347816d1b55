"""What a streaming job has already delivered, so a re-placed attempt resumes instead of restarting.

While a generation job runs, the scheduler holding it listens to the job's chunk subject
(``tether.results.<job>.chunks``, core NATS: it sees exactly what clients see) and keeps
the delivered prefix: the text, the token ids behind it and the next sequence number.
When the job is placed again (its worker died, timed out or handed it back while
draining) the next ``Dispatch`` carries that prefix as ``resume``; the new worker
continues after it, so the client never sees a token twice or a gap.

Only jobs for models announced with the ``generate`` task are watched (one subscription
per running job, dropped when the job ends). A job handed back to JetStream to wait for
a worker is *parked*: its prefix is kept for ``keep_s``, so when the job comes back to
this scheduler its next attempt still resumes (the gateway refuses to splice a restarted
attempt's tokens onto what its client has, and sends the rest with the final result).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import ResultChunk, ResumePrefix
from tether import codec, subjects
from tether.fleet import FleetView

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Delivered:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    seq: int = 0
    sub: Any = None
    parked_at: float | None = None  # handed back to JetStream at (None: running here)

    def prefix(self) -> ResumePrefix:
        return ResumePrefix(text="".join(self.text), token_ids=list(self.token_ids), seq=self.seq)


class StreamProgress:
    def __init__(self, nc: Client, fleet: FleetView, *, keep_s: float = 300.0) -> None:
        self._nc = nc
        self._fleet = fleet
        self._keep_s = keep_s
        self._jobs: dict[str, _Delivered] = {}
        self.chunks_seen = 0

    def streams(self, model_id: str, version: str) -> bool:
        """Whether a model's jobs stream tokens (some worker announces it with the generate task)."""
        for entry in self._fleet.serving(model_id, version):
            for m in entry.presence.models:
                if (m.model_id, m.version) == (model_id, version):
                    return m.task == "generate"
        return False

    async def watch(self, job_id: str) -> None:
        """Start following a job's chunks (idempotent); call before its first dispatch."""
        if (known := self._jobs.get(job_id)) is not None:
            known.parked_at = None
            return
        state = _Delivered()
        self._jobs[job_id] = state

        async def on_chunk(msg: Msg) -> None:
            self._record(state, msg)

        state.sub = await self._nc.subscribe(subjects.chunks_subject(job_id), cb=on_chunk)

    def _record(self, state: _Delivered, msg: Msg) -> None:
        try:
            chunk = ResultChunk.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
        except Exception as exc:
            log.debug("unreadable chunk ignored", extra={"error": repr(exc)})
            return
        if chunk.seq < state.seq:
            return  # a repeat (a zombie attempt): the client already has it
        self.chunks_seen += 1
        state.text.append(chunk.text)
        state.token_ids.extend(chunk.token_ids or [])
        state.seq = chunk.seq + 1

    def prefix(self, job_id: str) -> ResumePrefix | None:
        """What was delivered so far (None when nothing was)."""
        state = self._jobs.get(job_id)
        if state is None or state.seq == 0:
            return None
        return state.prefix()

    async def park(self, job_id: str) -> None:
        """The job went back to JetStream: keep its prefix for when it returns; drop long-parked ones."""
        now = time.monotonic()
        state = self._jobs.get(job_id)
        if state is not None:
            state.parked_at = now
        for stale in [j for j, s in self._jobs.items() if s.parked_at is not None and now - s.parked_at > self._keep_s]:
            await self.forget(stale)

    async def forget(self, job_id: str) -> None:
        state = self._jobs.pop(job_id, None)
        if state is not None and state.sub is not None:
            with contextlib.suppress(Exception):
                await state.sub.unsubscribe()
