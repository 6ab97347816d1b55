"""JetStream's max-deliveries advisory: a job JetStream will not deliver again goes to the DLQ.

The ``schedulers`` consumer caps deliveries (``TETHER_MAX_DELIVER``). A job that
reaches the cap (a scheduler crashed on it every time, or it waited for
capacity through every redelivery) stays in the JOBS work queue undelivered;
JetStream announces it on
``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.JOBS.schedulers``. One scheduler
(queue group) reads the message by its stream sequence, dead-letters it with
its attempt history, gives the client its ``dead_lettered`` final result, and
removes it from JOBS. Every step is idempotent (DLQ and RESULTS deduplicate
per job), so a scheduler dying halfway leaves nothing half-done for long. A job
whose last attempt is still open and within its expiry (its scheduler handed it
back, or died, while a worker runs it) is looked at again once that attempt has
expired; a job whose result is stored by then is recorded as it ended, not
dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.scheduler import outcomes
from services.scheduler.intake import ticket_from
from streams import JOBS, SCHEDULER_CONSUMER
from tether.errors import DeadLettered
from tether.settings import Settings
from tether.store import TERMINAL, JobStore
from tether.tasks import TaskGroup

log = logging.getLogger(__name__)

ADVISORY_SUBJECT = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS}.{SCHEDULER_CONSUMER}"
QUEUE = "schedulers-advisories"


class MaxDeliveries:
    def __init__(self, nc: Client, js: JetStreamContext, store: JobStore, settings: Settings) -> None:
        self._nc, self._js, self._store, self._settings = nc, js, store, settings
        self._sub = None
        self._later = TaskGroup("max-deliveries-later")
        self.dead_lettered = 0

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(ADVISORY_SUBJECT, queue=QUEUE, cb=self._on_advisory)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        await self._later.close()

    async def _again(self, seq: int, deliveries: int, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.dead_letter(seq, deliveries)
        except Exception:
            log.exception("max-deliveries dead letter failed", extra={"stream_seq": seq})

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable max-deliveries advisory", extra={"error": str(exc)})
            return
        try:
            await self.dead_letter(seq, deliveries)
        except Exception:
            log.exception("max-deliveries dead letter failed", extra={"stream_seq": seq})

    async def dead_letter(self, seq: int, deliveries: int) -> bool:
        """Dead-letter JOBS message ``seq``; False when it is gone already (handled elsewhere)."""
        try:
            raw = await self._js.get_msg(JOBS, seq)
        except Exception:
            return False
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
                self._later.spawn(self._again(seq, deliveries, wait + 1.0), name=f"dlq-later:{seq}")
                return True
        if row is None or row["status"] not in TERMINAL:
            attempts = int(row["attempts"]) if row else 0
            reason = DeadLettered(
                f"JetStream delivered the job {deliveries} times without it finishing (max deliveries)"
            )
            await outcomes.dead_letter(self._js, self._store, t, attempts, reason)
            self.dead_lettered += 1
            log.warning("job dead-lettered after max deliveries", extra={"job": t.job_id, "seq": seq})
        with contextlib.suppress(Exception):
            await self._js.delete_msg(JOBS, seq)
        return True
