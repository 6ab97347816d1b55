"""What a streaming job has already delivered, so a re-placed attempt resumes instead of restarting.

While a generation job runs, the scheduler holding it listens to the job's chunk subject
(``tether.results.<job>.chunks``, core NATS: it sees exactly what clients see) and keeps
the delivered prefix: the text, the token ids behind it and the next sequence number.
When the job is placed again (its worker died, timed out or handed it back while
draining) the next ``Dispatch`` carries that prefix as ``resume``; the new worker
continues after it, so the client never sees a token twice or a gap.

Only jobs for models announced with the ``generate`` task are watched (one subscription
per running job, dropped when the job ends). A job handed back to JetStream to wait for
a worker is *parked*: its prefix is kept here for ``keep_s`` and written to the
``tether_resume`` KV bucket, so whichever scheduler JetStream gives the job to next
resumes it (a redelivered job's prefix is looked up there before its first attempt).
Should that fail, the gateway refuses to splice a restarted attempt's tokens onto what
its client has, and sends the rest with the final result.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from schemas import ResultChunk, ResumePrefix
from tether import codec, subjects
from tether.fleet import FleetView

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Delivered:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    seq: int = 0
    attempt: int = 0  # the attempt whose chunks extend the prefix
    sub: Any = None
    parked_at: float | None = None  # handed back to JetStream at (None: running here)
    shared: bool = False  # its prefix is (or was) in the KV bucket: delete it when the job ends

    def prefix(self) -> ResumePrefix:
        return ResumePrefix(text="".join(self.text), token_ids=list(self.token_ids), seq=self.seq)


class StreamProgress:
    def __init__(
        self, nc: Client, fleet: FleetView, *, keep_s: float = 300.0, kv: KeyValue | None = None
    ) -> None:
        self._nc = nc
        self._fleet = fleet
        self._keep_s = keep_s
        self._kv = kv
        self._jobs: dict[str, _Delivered] = {}
        self._parked: OrderedDict[str, float] = OrderedDict()  # job -> when parked, oldest first
        self.chunks_seen = 0

    def streams(self, model_id: str, version: str) -> bool:
        """Whether a model's jobs stream tokens (some worker announces it with the generate task)."""
        for entry in self._fleet.serving(model_id, version):
            for m in entry.presence.models:
                if (m.model_id, m.version) == (model_id, version):
                    return m.task == "generate"
        return False

    async def watch(self, job_id: str, *, redelivered: bool = False) -> None:
        """Start following a job's chunks (idempotent); call before its first dispatch.

        A ``redelivered`` job another scheduler parked gets that scheduler's prefix from the KV bucket.
        """
        if (known := self._jobs.get(job_id)) is not None:  # back before the sweep can drop its prefix
            known.parked_at = None
            self._parked.pop(job_id, None)
            await self._sweep(time.monotonic())
            return
        await self._sweep(time.monotonic())
        state = _Delivered()
        self._jobs[job_id] = state
        if redelivered and self._kv is not None:
            await self._load(job_id, state)

        async def on_chunk(msg: Msg) -> None:
            self._record(state, msg)

        state.sub = await self._nc.subscribe(subjects.chunks_subject(job_id), cb=on_chunk)

    def _record(self, state: _Delivered, msg: Msg) -> None:
        try:
            chunk = ResultChunk.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
        except Exception as exc:
            log.debug("unreadable chunk ignored", extra={"error": repr(exc)})
            return
        if chunk.attempt < state.attempt or chunk.seq != state.seq:
            return  # a zombie attempt, a repeat, or past a chunk lost on the way: the prefix ends before it
        if chunk.token_ids is not None and chunk.offset != len(state.token_ids):
            return  # does not continue the delivered tokens (an attempt that started over)
        state.attempt = chunk.attempt
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
            self._parked[job_id] = now
            self._parked.move_to_end(job_id)
            if state.seq > 0 and self._kv is not None:
                try:
                    await self._kv.put(_kv_key(job_id), codec.encode(state.prefix().wire(), codec.MSGPACK))
                    state.shared = True
                except Exception as exc:  # best effort: this scheduler still has it
                    log.warning("resume prefix not shared", extra={"job": job_id, "error": repr(exc)})
        await self._sweep(now)

    async def _sweep(self, now: float) -> None:
        """Forget jobs parked longer than they are kept (another scheduler has them, or they ended there):
        oldest first, so each look costs what it removes, on parks and on new jobs alike."""
        while self._parked:
            job_id, parked_at = next(iter(self._parked.items()))
            if now - parked_at <= self._keep_s:
                return
            await self.forget(job_id)

    async def forget(self, job_id: str) -> None:
        self._parked.pop(job_id, None)
        state = self._jobs.pop(job_id, None)
        if state is not None and state.sub is not None:
            with contextlib.suppress(Exception):
                await state.sub.unsubscribe()
        if state is not None and state.shared and state.parked_at is None and self._kv is not None:
            with contextlib.suppress(Exception):  # the job ended; the bucket's TTL covers a failure here
                await self._kv.delete(_kv_key(job_id))

    async def _load(self, job_id: str, state: _Delivered) -> None:
        try:
            entry = await self._kv.get(_kv_key(job_id))  # type: ignore[union-attr]
        except Exception:  # not there (KeyNotFoundError), or unreachable: start from the beginning
            return
        if not entry.value:
            return
        try:
            prefix = ResumePrefix.model_validate(codec.decode(entry.value, codec.MSGPACK))
        except Exception as exc:
            log.warning("unreadable resume prefix ignored", extra={"job": job_id, "error": repr(exc)})
            return
        state.text, state.token_ids, state.seq, state.shared = [prefix.text], list(prefix.token_ids), prefix.seq, True


def _kv_key(job_id: str) -> str:
    """A KV-safe key for any job id."""
    return "r." + hashlib.sha256(job_id.encode()).hexdigest()
