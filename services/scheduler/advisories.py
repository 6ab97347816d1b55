"""JetStream's max-deliveries advisory: a job JetStream will not deliver again goes to the DLQ.

The ``schedulers`` consumer caps deliveries (``TETHER_MAX_DELIVER``). A job that
reaches the cap (a scheduler crashed on it every time, or it waited for
capacity through every redelivery) stays in the JOBS work queue undelivered;
JetStream announces it on
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.JOBS.schedulers``. The
``ADVISORIES`` stream keeps those notices, so one sent while no scheduler
listened (every scheduler restarting, or the one that would have heard it dying
first) is not lost, and with it the job. Schedulers share the durable consumer
``schedulers-advisories``: one of them reads the job by its stream sequence,
dead-letters it with its attempt history, gives the client its
``dead_lettered`` final result, removes it from JOBS, and only then acks the
notice. Every step is idempotent (DLQ and RESULTS deduplicate per job), so a
scheduler dying halfway leaves the notice to another. A job whose last attempt
is still open and within its expiry (its scheduler handed it back, or died,
while a worker runs it) gets its notice back once that attempt has expired; a
job whose result is stored by then is recorded as it ended, not dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.scheduler import outcomes
from services.scheduler.intake import ticket_from
from services.scheduler.pull import PullConsumer
from streams import ADVISORIES, ADVISORIES_CONSUMER, JOBS
from tether.errors import DeadLettered
from tether.settings import Settings
from tether.store import TERMINAL, JobStore
from tether.tasks import TaskGroup

log = logging.getLogger(__name__)

#: Notices handled at once by one scheduler.
MAX_HANDLING = 16


class MaxDeliveries:
    def __init__(self, nc: Client, js: JetStreamContext, store: JobStore, settings: Settings) -> None:
        self._nc, self._js, self._store, self._settings = nc, js, store, settings
        self._handling = TaskGroup("max-deliveries")
        self._loop = TaskGroup("max-deliveries-pull")
        self._running = False
        self._puller: PullConsumer | None = None
        self.dead_lettered = 0

    async def start(self) -> None:
        puller = PullConsumer(
            self._nc,
            stream=ADVISORIES,
            durable=ADVISORIES_CONSUMER,
            handler=lambda msg: self._handling.spawn(self._on_advisory(msg), name="max-deliveries"),
            room=lambda: MAX_HANDLING - len(self._handling),
            batch=MAX_HANDLING,
        )
        self._running = True
        self._puller = puller
        self._loop.spawn(puller.run(lambda: self._running), name="max-deliveries-pull")

    async def stop(self) -> None:
        self._running = False
        await self._loop.close()
        await self._handling.close()  # unacked notices come back to another scheduler after ack_wait

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable max-deliveries advisory dropped", extra={"error": str(exc)})
            await _settle(msg.term())
            return
        try:
            again = await self.dead_letter(seq, deliveries)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("max-deliveries dead letter failed; will retry", extra={"stream_seq": seq})
            again = 1.0 + random.random()
        await _settle(msg.ack() if again is None else msg.nak(delay=again))
        if self._puller is not None:
            self._puller.poke()

    async def dead_letter(self, seq: int, deliveries: int) -> float | None:
        """Dead-letter JOBS message ``seq``; seconds until it should be looked at again, or None when done.

        None also when the message is gone already (acked, or handled by another scheduler).
        """
        try:
            raw = await self._js.get_msg(JOBS, seq)
        except NotFoundError:
            return None
        t = ticket_from(
            raw.subject or "",
            raw.data or b"",
            dict(raw.headers or {}),
            seq=seq,
            enqueued_at=raw.time.timestamp() if getattr(raw, "time", None) else 0.0,
            settings=self._settings,
        )
        row = await self._store.get(t.job_id)
        if row is not None and row["status"] not in TERMINAL:
            history = await self._store.attempts(t.job_id)
            last = history[-1] if history else None
            wait = float(last["expires_at"] or 0) - time.time() if last and last["finished_at"] is None else 0.0
            if wait > 0:  # its attempt may still finish: look again once it has expired
                return wait + 1.0
        if row is None or row["status"] not in TERMINAL:
            attempts = int(row["attempts"]) if row else 0
            reason = DeadLettered(
                f"JetStream delivered the job {deliveries} times without it finishing (max deliveries)"
            )
            await outcomes.dead_letter(self._js, self._store, t, attempts, reason)
            self.dead_lettered += 1
            log.warning("job dead-lettered after max deliveries", extra={"job": t.job_id, "seq": seq})
        with contextlib.suppress(NotFoundError):
            await self._js.delete_msg(JOBS, seq)
        return None


async def _settle(ack: Awaitable[None]) -> None:
    """Ack, nak or term a notice; a lost one only means the notice comes back after ``ack_wait``."""
    with contextlib.suppress(Exception):
        await ack
