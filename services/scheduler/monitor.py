"""The scheduler's watch over the fleet: health transitions, breaker events, what to remember.

* Every quarter heartbeat period, ``FleetView.sweep`` finds workers whose state
  changed (HEALTHY / SUSPECT after 2T / OFFLINE after 3T); each change is
  logged and published on ``tether.events.worker.<state>``.
* Breaker transitions are logged, published on ``tether.events.breaker.<state>``
  and written to the store's ``breakers`` table (``tether status`` shows them).
* Every few seconds: worker reliability totals are written to the store (a
  restarted scheduler loads them), and reservations past their expiry are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from services.scheduler.breakers import BreakerBoard, Transition
from services.scheduler.reliability import Reliability
from tether import codec, subjects, telemetry
from tether.fleet import FleetView, Health
from tether.store.fleetstate import FleetState

log = logging.getLogger(__name__)

PERSIST_EVERY_S = 5.0


class FleetMonitor:
    def __init__(
        self,
        *,
        nc: Client,
        fleet: FleetView,
        state: FleetState,
        reliability: Reliability,
        breakers: BreakerBoard,
        scheduler_id: str,
    ) -> None:
        self._nc = nc
        self.fleet = fleet
        self.state = state
        self.reliability = reliability
        self.breakers = breakers
        self.scheduler_id = scheduler_id
        self._pending: list[Transition] = []
        self._wake = asyncio.Event()
        self.events_published = 0

    async def load(self) -> None:
        self.reliability.load(await self.state.load_reliability())
        await self._nc.subscribe(subjects.control_wildcard("drain"), cb=self._on_drain)

    async def _on_drain(self, msg: Msg) -> None:
        target = subjects.decode_token(msg.subject.rsplit(".", 1)[-1])
        targets = [e.worker_id for e in self.fleet.workers()] if target == "all" else [target]
        for worker_id in targets:
            if self.fleet.mark_draining(worker_id):
                log.info("worker draining: no new placements", extra={"worker": worker_id})

    def on_breaker(self, t: Transition) -> None:
        """BreakerBoard callback (synchronous): queue the transition for the monitor loop."""
        level = logging.WARNING if t.new != "CLOSED" else logging.INFO
        log.log(
            level,
            "breaker %s -> %s",
            t.old,
            t.new,
            extra={"model": t.key[0], "version": t.key[1], "region": t.key[2], "reason": t.reason},
        )
        self._pending.append(t)
        self._wake.set()

    async def run(self) -> None:
        period = max(0.05, min(1.0, self.fleet.heartbeat_s / 4))
        next_persist = time.monotonic() + PERSIST_EVERY_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=period)
            self._wake.clear()
            await self._publish_breakers()
            for entry, old, new in self.fleet.sweep():
                await self._worker_changed(
                    entry.worker_id, entry.presence.region, old, new, self.fleet.wall_time(entry.last_seen)
                )
            if time.monotonic() >= next_persist:
                next_persist = time.monotonic() + PERSIST_EVERY_S
                await self.persist()

    async def persist(self) -> None:
        try:
            dirty = self.reliability.take_dirty()
            await self.state.save_reliability(
                (w, r.successes, r.failures, r.updated_at) for w, r in dirty
            )
            released = await self.state.release_expired(time.time())
            if released:
                log.info("expired reservations released", extra={"count": released})
        except Exception as exc:  # the store being briefly unavailable must not end the loop
            log.warning("fleet state not persisted", extra={"error": repr(exc)})

    async def _worker_changed(
        self, worker_id: str, region: str, old: Health | None, new: Health, last_seen: float
    ) -> None:
        if old is None and new is Health.HEALTHY:
            log.info("worker joined", extra={"worker": worker_id, "region": region})
        else:
            log.log(
                logging.INFO if new is Health.HEALTHY else logging.WARNING,
                "worker %s",
                new.lower(),
                extra={"worker": worker_id, "previous": str(old) if old else None, "region": region},
            )
        await self._event(
            subjects.event_subject("worker", new.lower()),
            {
                "kind": "worker",
                "workerId": worker_id,
                "region": region,
                "state": str(new),
                "previous": str(old) if old else None,
                "lastSeen": last_seen,
                "schedulerId": self.scheduler_id,
                "ts": time.time(),
            },
        )

    async def _publish_breakers(self) -> None:
        pending, self._pending = self._pending, []
        for t in pending:
            model, version, region = t.key
            await self._event(
                subjects.event_subject("breaker", str(t.new).lower()),
                {
                    "kind": "breaker",
                    "modelId": model,
                    "version": version,
                    "region": region,
                    "state": str(t.new),
                    "previous": str(t.old),
                    "failures": t.failures,
                    "reason": t.reason,
                    "schedulerId": self.scheduler_id,
                    "ts": t.at,
                },
            )
            with contextlib.suppress(Exception):
                await self.state.save_breaker(
                    t.key,
                    state=str(t.new),
                    failures=t.failures,
                    opened_at=t.at if t.new == "OPEN" else None,
                    scheduler_id=self.scheduler_id,
                    now=t.at,
                )

    async def _event(self, subject: str, payload: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self._nc.publish(
                subject,
                codec.encode(payload),
                headers={**telemetry.child_headers(None), codec.CONTENT_TYPE: codec.JSON},
            )
            self.events_published += 1
