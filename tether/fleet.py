"""The fleet view: which workers are alive and what they serve, from presence messages.

Gateways (to reject unknown models at once) and schedulers (to place jobs)
both hold one. It is eventually consistent: built from heartbeats on
``tether.presence.>`` and rebuilt at start from the ``PRESENCE`` stream, which
keeps the last heartbeat per worker, so a new process knows the fleet at once
instead of after a heartbeat period.

Every heartbeat and model announcement is a signed envelope; only what the
``PresenceGate`` admits (tether/signed.py) enters the view. Rejections are
counted by reason in ``rejections``.

Health by heartbeat age (T = heartbeat period): HEALTHY up to 2T, SUSPECT up
to 3T, OFFLINE after, measured on the monotonic clock (a step of the wall
clock neither keeps a dead worker alive nor kills live ones); ``sweep()`` reports transitions (the scheduler logs them
and publishes ``tether.events.worker.<state>``). Workers are indexed by the
models they serve, so finding candidates costs O(matches), not O(fleet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas import ModelAnnouncement, ModelState, Presence
from tether import subjects
from tether.envelope import EnvelopeRejected, open_envelope, signature_ok
from tether.presence_ingest import PresenceIngest
from tether.settings import Settings, default_verify_workers
from tether.signed import Admission, PresenceGate
from tether.worker_index import WorkerIndex

log = logging.getLogger(__name__)


class Health(StrEnum):
    HEALTHY = "HEALTHY"
    SUSPECT = "SUSPECT"
    OFFLINE = "OFFLINE"


#: Model states a worker can take jobs for: warm now, or evicted from memory but loadable on demand.
SERVABLE_STATES = (ModelState.WARM, ModelState.EVICTED)


@dataclass(slots=True)
class WorkerEntry:
    presence: Presence
    last_seen: float
    served: dict[tuple[str, str], ModelState] = field(default_factory=dict)
    signer: bytes | None = None  # the public key that signed its heartbeats (None: observed unsigned)

    @property
    def worker_id(self) -> str:
        return self.presence.worker_id

    @property
    def incarnation(self) -> float:
        """Which run of the worker process this is: its ``started_at`` (a restart under the same key
        changes it, and the jobs dispatched to the earlier run are gone)."""
        return self.presence.started_at


class FleetView:
    def __init__(
        self,
        *,
        heartbeat_s: float,
        gate: PresenceGate,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.heartbeat_s = heartbeat_s
        self.gate = gate
        self._settings = settings
        self._clock = clock  # ages and health; ``wall`` only to place stream timestamps on it
        self._wall = wall
        self._workers: dict[str, WorkerEntry] = {}
        self._by_model: dict[tuple[str, str], WorkerIndex] = {}
        self._health: dict[str, Health] = {}
        self.forget_after = 60  # heartbeat periods an OFFLINE worker stays listed
        self._models_seen: set[tuple[str, str]] = set()
        self.announcements: dict[tuple[str, str, str], ModelAnnouncement] = {}
        self._announced: dict[str, tuple[float, set[tuple[str, str, str]]]] = {}  # worker -> (last, keys)
        #: Called with a worker id when the view forgets it (per-worker caches elsewhere drop it too).
        self.on_forget: list[Callable[[str], None]] = []
        self._subs: list[object] = []
        self.ingest: PresenceIngest | None = None  # live traffic, once started
        #: Processes checking signatures of live traffic under load (``tether.presence_ingest``).
        self.verify_workers = settings.verify_workers if settings is not None else default_verify_workers()
        self.changed = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> FleetView:
        """A fleet view admitting heartbeats from workers the settings' trust store allows."""
        from tether.security import verifier_for

        gate = PresenceGate(verifier_for(settings, "worker"))
        return cls(heartbeat_s=settings.heartbeat_s, gate=gate, settings=settings, clock=clock)

    @property
    def rejections(self) -> Counter[str]:
        """Rejected heartbeats and announcements, by reason."""
        return self.gate.rejections

    @property
    def rejected(self) -> int:
        return sum(self.gate.rejections.values())

    # ---- pure state ---------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def _seen(self, seen_at: float | None) -> float:
        """When, on this view's clock, a message seen at wall time ``seen_at`` (None: now) arrived."""
        if seen_at is None:
            return self._clock()
        return self._clock() - max(0.0, self._wall() - seen_at)

    def wall_time(self, at: float) -> float:
        """A time on this view's clock (``last_seen``) as wall-clock seconds, for events and views."""
        return self._wall() - (self._clock() - at)

    def observe(self, presence: Presence, *, seen_at: float | None = None, signer: bytes | None = None) -> None:
        """Take a heartbeat; ``seen_at``: the wall time it was stored (replayed from the stream)."""
        now = self._seen(seen_at)
        worker_id = presence.worker_id
        entry = self._workers.get(worker_id)
        if entry is not None:
            prev = entry.presence
            if presence.started_at == prev.started_at and presence.seq <= prev.seq:
                return  # out of order or duplicate
            if presence.started_at < prev.started_at and self.health(entry, now) is not Health.OFFLINE:
                return  # a late heartbeat of the run the live one replaced
        served = {(m.model_id, m.version): m.state for m in presence.models if m.state in SERVABLE_STATES}
        if entry is None:
            entry = self._workers[worker_id] = WorkerEntry(presence, now)
            old: dict[tuple[str, str], ModelState] = {}
        else:  # updated in place: the model indexes hold this entry already
            entry.presence, entry.last_seen = presence, now
            old = entry.served
        if signer is not None:
            entry.signer = signer
        if served != old:
            entry.served = served
            for key in old.keys() - served.keys():
                index = self._by_model.get(key)
                if index is not None:
                    index.discard(worker_id)
            for key in served.keys() - old.keys():
                index = self._by_model.get(key)
                if index is None:
                    index = self._by_model[key] = WorkerIndex()
                index.put(entry)
        seen = self._models_seen
        for m in presence.models:
            key = (m.model_id, m.version)
            if key not in seen:
                seen.add(key)
        self.changed.set()

    def health(self, entry: WorkerEntry, now: float | None = None) -> Health:
        age = (self._clock() if now is None else now) - entry.last_seen
        if age <= 2 * self.heartbeat_s:
            return Health.HEALTHY
        if age <= 3 * self.heartbeat_s:
            return Health.SUSPECT
        return Health.OFFLINE

    def alive(self, worker_id: str) -> bool:
        """Known and not OFFLINE: it may still be running what it was given."""
        entry = self._workers.get(worker_id)
        return entry is not None and self.health(entry) is not Health.OFFLINE

    def trusted(self, entry: WorkerEntry) -> bool:
        """Does the live trust store (allowlist file, TETHER_TRUST bucket, run-time changes) still
        allow the key that signed this worker's heartbeats? A key denied or dropped since its last
        heartbeat gets no more work, though the entry stays listed until it goes OFFLINE."""
        if entry.signer is None:
            return True
        v = self.gate.verifier
        return not v.trust.is_denied(entry.signer) and (v.allow_all or v.trust.allows(entry.signer, v.role))

    def sweep(self, now: float | None = None) -> list[tuple[WorkerEntry, Health | None, Health]]:
        """Health transitions since the last sweep: ``(entry, old or None if new, new)``.

        Workers OFFLINE for ``forget_after`` heartbeat periods are dropped from the view.
        """
        now = self._clock() if now is None else now
        changes: list[tuple[WorkerEntry, Health | None, Health]] = []
        for worker_id, entry in list(self._workers.items()):
            state = self.health(entry, now)
            old = self._health.get(worker_id)
            if state is not old:
                self._health[worker_id] = state
                changes.append((entry, old, state))
            if state is Health.OFFLINE and now - entry.last_seen > self.forget_after * self.heartbeat_s:
                self.forget(worker_id)
        horizon = now - self.forget_after * self.heartbeat_s
        for worker_id, (last, _keys) in list(self._announced.items()):
            if last < horizon and worker_id not in self._workers:  # announced, never (or no longer) beating
                self._drop_announcements(worker_id)
        return changes

    def forget(self, worker_id: str) -> None:
        entry = self._workers.pop(worker_id, None)
        self._health.pop(worker_id, None)
        self._drop_announcements(worker_id)
        if entry is not None:
            for key in entry.served:
                index = self._by_model.get(key)
                if index is not None:
                    index.discard(worker_id)
            for hook in self.on_forget:
                hook(worker_id)

    def _drop_announcements(self, worker_id: str) -> None:
        _last, keys = self._announced.pop(worker_id, (0.0, set()))
        for key in keys:
            self.announcements.pop(key, None)

    def mark_draining(self, worker_id: str) -> bool:
        """A drain was ordered: stop placing on the worker now, before its next heartbeat says so."""
        entry = self._workers.get(worker_id)
        if entry is None:
            return False
        entry.presence = entry.presence.model_copy(update={"draining": True})
        return True

    def workers(self) -> list[WorkerEntry]:
        return list(self._workers.values())

    def get(self, worker_id: str) -> WorkerEntry | None:
        return self._workers.get(worker_id)

    def serving(self, model_id: str, version: str) -> list[WorkerEntry]:
        """Every known worker that lists the model warm or loadable (health not checked: O(matches))."""
        index = self._by_model.get((model_id, version))
        return index.entries() if index else []

    def serving_index(self, model_id: str, version: str) -> WorkerIndex | None:
        """The model's index itself, for sampling without copying it."""
        return self._by_model.get((model_id, version))

    def model_state(self, entry: WorkerEntry, model_id: str, version: str) -> ModelState:
        return entry.served.get((model_id, version), ModelState.FAILED)

    def candidates(self, model_id: str, version: str, now: float | None = None) -> list[WorkerEntry]:
        """Workers heard from within 3T, not draining, with the model warm."""
        now = self._clock() if now is None else now
        return [
            e
            for e in self.serving(model_id, version)
            if not e.presence.draining
            and e.served.get((model_id, version)) is ModelState.WARM
            and self.health(e, now) is not Health.OFFLINE
            and self.trusted(e)
        ]

    def knows_model(self, model_id: str, version: str) -> bool:
        """Has any worker ever announced this model (in any state)?"""
        return (model_id, version) in self._models_seen

    def models(self) -> list[tuple[str, str]]:
        return sorted(self._models_seen)

    # ---- wiring to NATS -----------------------------------------------------------------------

    def accept(
        self, subject: str, data: bytes, *, seen_at: float | None = None, replay: bool = False
    ) -> bool:
        """Admit one signed heartbeat or announcement; False (counted, never in the view) if refused."""
        if replay and self._already_seen(data):
            return False
        try:
            adm = self.gate.prepare(subject, data)
        except EnvelopeRejected:
            return False
        return self.admit(adm, signature_ok(adm.pending), seen_at=seen_at)

    def admit(self, adm: Admission, signature_valid: bool, *, seen_at: float | None = None) -> bool:
        """Finish admitting a prepared message whose signature was checked; False if refused."""
        try:
            msg = self.gate.complete(adm, signature_valid)
        except EnvelopeRejected:
            return False
        if isinstance(msg, ModelAnnouncement):
            key = (msg.worker_id, msg.model_id, msg.version)
            self.announcements[key] = msg
            _last, keys = self._announced.get(msg.worker_id, (0.0, set()))
            keys.add(key)
            self._announced[msg.worker_id] = (self._seen(seen_at), keys)
            self._models_seen.add((msg.model_id, msg.version))
        else:
            self.observe(msg, seen_at=seen_at, signer=adm.pending.envelope.public_key)
        return True

    def _already_seen(self, data: bytes) -> bool:
        """A stored message that came live already, or too old to matter: skipped, not a rejection."""
        try:
            env = open_envelope(data)
        except EnvelopeRejected:
            return False
        v = self.gate.verifier
        return env.public_key + env.nonce in v.nonces or env.timestamp < self._wall() - v.skew_s

    async def start(self, nc: Client, js: JetStreamContext, region: str = "*") -> None:
        """Follow the trust store, subscribe to live heartbeats and announcements, then replay
        the last of each per subject from the stream."""
        if self._settings is not None:
            from tether.security import start_trust

            await start_trust(self.gate.verifier.trust, js, self._settings)
        tail = ">" if region == "*" else f"{subjects.encode_token(region)}.>"
        presence = f"{subjects.PREFIX}.presence.{tail}"

        ingest = self.ingest = PresenceIngest(self, workers=self.verify_workers)

        async def on_msg(msg: Msg) -> None:
            ingest.submit(msg.subject, msg.data)

        self._subs.append(await nc.subscribe(presence, cb=on_msg))
        self._subs.append(await nc.subscribe(subjects.MODELS_ALL, cb=on_msg))
        await self._replay(js, presence)
        await self._replay(js, subjects.MODELS_ALL)

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
                    self.accept(m.subject, m.data, seen_at=ts, replay=True)
                if msgs and msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
        if self.ingest is not None:
            await self.ingest.stop()
        await self.gate.verifier.trust.stop()
