"""The fleet view: which workers are alive and what they serve, from presence messages.

Gateways (to reject unknown models at once) and schedulers (to place jobs)
both hold one. It is eventually consistent: built from heartbeats on
``tether.presence.>`` and rebuilt at start from the ``PRESENCE`` stream, which
keeps the last heartbeat per worker, so a new process knows the fleet at once
instead of after a heartbeat period.

Health by heartbeat age (T = heartbeat period): HEALTHY up to 2T, SUSPECT up
to 3T, OFFLINE after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas import ModelState, Presence
from tether import codec, subjects
from tether.errors import TetherError

log = logging.getLogger(__name__)

PresenceDecoder = Callable[[bytes, dict[str, str] | None], Presence]


def decode_presence(data: bytes, headers: dict[str, str] | None) -> Presence:
    return Presence.model_validate(codec.decode(data, codec.content_type_of(headers)))


class Health(StrEnum):
    HEALTHY = "HEALTHY"
    SUSPECT = "SUSPECT"
    OFFLINE = "OFFLINE"


@dataclass(slots=True)
class WorkerEntry:
    presence: Presence
    last_seen: float

    @property
    def worker_id(self) -> str:
        return self.presence.worker_id


class FleetView:
    def __init__(
        self,
        *,
        heartbeat_s: float,
        decoder: PresenceDecoder = decode_presence,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.heartbeat_s = heartbeat_s
        self._decoder = decoder
        self._clock = clock
        self._workers: dict[str, WorkerEntry] = {}
        self._models_seen: set[tuple[str, str]] = set()
        self._sub = None
        self.rejected = 0
        self.changed = asyncio.Event()

    # ---- pure state ---------------------------------------------------------------------------

    def observe(self, presence: Presence, *, seen_at: float | None = None) -> None:
        now = self._clock() if seen_at is None else seen_at
        prev = self._workers.get(presence.worker_id)
        if (
            prev is not None
            and presence.started_at == prev.presence.started_at
            and presence.seq <= prev.presence.seq
        ):
            return  # out of order or duplicate
        self._workers[presence.worker_id] = WorkerEntry(presence, now)
        for m in presence.models:
            self._models_seen.add((m.model_id, m.version))
        self.changed.set()

    def health(self, entry: WorkerEntry, now: float | None = None) -> Health:
        age = (self._clock() if now is None else now) - entry.last_seen
        if age <= 2 * self.heartbeat_s:
            return Health.HEALTHY
        if age <= 3 * self.heartbeat_s:
            return Health.SUSPECT
        return Health.OFFLINE

    def workers(self) -> list[WorkerEntry]:
        return list(self._workers.values())

    def get(self, worker_id: str) -> WorkerEntry | None:
        return self._workers.get(worker_id)

    def candidates(self, model_id: str, version: str, now: float | None = None) -> list[WorkerEntry]:
        """Workers heard from within 3T, not draining, with the model warm."""
        now = self._clock() if now is None else now
        out = []
        for entry in self._workers.values():
            p = entry.presence
            if p.draining or self.health(entry, now) is Health.OFFLINE:
                continue
            if any(
                m.model_id == model_id and m.version == version and m.state == ModelState.WARM
                for m in p.models
            ):
                out.append(entry)
        return out

    def lost(self, worker_id: str, started_at: float | None, now: float | None = None) -> str | None:
        """Why work placed on ``worker_id`` (whose process started at ``started_at``) cannot finish.

        The worker went OFFLINE (no heartbeat for 3T), or it restarted since (a new
        process knows nothing of the old one's jobs). None while it may still finish.
        """
        entry = self._workers.get(worker_id)
        if entry is None:
            return None
        if started_at is not None and entry.presence.started_at != started_at:
            return f"worker {worker_id} restarted"
        if self.health(entry, now) is Health.OFFLINE:
            return f"worker {worker_id} went OFFLINE (no heartbeat for {3 * self.heartbeat_s:g}s)"
        return None

    def knows_model(self, model_id: str, version: str) -> bool:
        """Has any worker ever announced this model (in any state)?"""
        return (model_id, version) in self._models_seen

    def models(self) -> list[tuple[str, str]]:
        return sorted(self._models_seen)

    # ---- wiring to NATS -----------------------------------------------------------------------

    def _accept(self, data: bytes, headers: dict[str, str] | None, seen_at: float | None = None) -> None:
        try:
            presence = self._decoder(data, headers)
        except (TetherError, ValueError) as exc:
            self.rejected += 1
            log.debug("presence rejected", extra={"error": str(exc)})
            return
        self.observe(presence, seen_at=seen_at)

    async def start(self, nc: Client, js: JetStreamContext, region: str = "*") -> None:
        """Subscribe to live heartbeats, then replay the last heartbeat per worker from the stream."""
        subject = (
            f"{subjects.PREFIX}.presence.>" if region == "*" else f"{subjects.PREFIX}.presence.{region}.>"
        )

        async def on_msg(msg: Msg) -> None:
            self._accept(msg.data, msg.headers)

        self._sub = await nc.subscribe(subject, cb=on_msg)
        await self._replay(js, subject)

    async def _replay(self, js: JetStreamContext, subject: str) -> None:
        from streams import PRESENCE

        try:
            psub = await js.pull_subscribe(
                subject,
                stream=PRESENCE,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=30.0,
                ),
            )
        except Exception as exc:  # stream missing at the very first start: nothing to replay
            log.info("presence replay skipped", extra={"error": str(exc)})
            return
        try:
            while True:
                try:
                    msgs = await psub.fetch(256, timeout=0.3)
                except TimeoutError:
                    break
                for m in msgs:
                    ts = m.metadata.timestamp.timestamp() if m.metadata and m.metadata.timestamp else None
                    self._accept(m.data, m.headers, seen_at=ts)
                if msgs and msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
