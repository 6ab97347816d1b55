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
import re
import time
from collections.abc import Awaitable
from datetime import datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from services.scheduler import outcomes
from services.scheduler.intake import stored_ns_of, ticket_from
from services.scheduler.pull import PullConsumer
from streams import ADVISORIES, ADVISORIES_CONSUMER, JOBS, MAX_DELIVERIES_SUBJECT
from tether.errors import DeadLettered
from tether.settings import Settings
from tether.store import TERMINAL, JobStore
from tether.tasks import TaskGroup

log = logging.getLogger(__name__)

#: Notices handled at once by one scheduler.
MAX_HANDLING = 16
#: A JOBS message stored this long after the notice naming its sequence is another message
#: (JOBS was recreated); the margin covers clocks of different cluster nodes.
CLOCK_SKEW_S = 1.0


class MaxDeliveries:
    def __init__(self, nc: Client, js: JetStreamContext, store: JobStore, settings: Settings) -> None:
        self._nc, self._js, self._store, self._settings = nc, js, store, settings
        self._handling = TaskGroup("max-deliveries")
        self._loop = TaskGroup("max-deliveries-pull")
        self._running = False
        self._puller: PullConsumer | None = None
        self._sub: Subscription | None = None
        self.dead_lettered = 0

    async def start(self) -> None:
        self._running = True
        try:
            await self._js.stream_info(ADVISORIES)
        except NotFoundError:  # another stream already keeps these advisories (see streams/apply.py)
            log.error(
                "no ADVISORIES stream: max-deliveries notices are handled only while a scheduler listens",
                extra={"subject": MAX_DELIVERIES_SUBJECT},
            )
            self._sub = await self._nc.subscribe(MAX_DELIVERIES_SUBJECT, queue=ADVISORIES_CONSUMER, cb=self._heard)
            return
        self._puller = PullConsumer(
            self._nc,
            stream=ADVISORIES,
            durable=ADVISORIES_CONSUMER,
            handler=lambda msg: self._handling.spawn(self._stored(msg), name="max-deliveries"),
            room=lambda: MAX_HANDLING - len(self._handling),
            batch=MAX_HANDLING,
        )
        self._loop.spawn(self._puller.run(lambda: self._running), name="max-deliveries-pull")

    async def stop(self) -> None:
        self._running = False
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        await self._loop.close()
        await self._handling.close()  # notices being handled are nak'ed: another scheduler takes them

    async def _stored(self, msg: Msg) -> None:
        """A notice from the ADVISORIES stream: acked once handled, nak'ed to be looked at again."""
        try:
            again = await self._notice(msg.data)
        except asyncio.CancelledError:
            await _settle(msg.nak())
            raise
        await _settle(msg.ack() if again is None else msg.nak(delay=again))
        if self._puller is not None:
            self._puller.poke()

    async def _heard(self, msg: Msg) -> None:
        """A notice heard on core NATS (no ADVISORIES stream): looked at again from memory."""
        data = msg.data

        async def handle() -> None:
            while (again := await self._notice(data)) is not None:
                await asyncio.sleep(again)

        self._handling.spawn(handle(), name="max-deliveries")

    async def _notice(self, data: bytes) -> float | None:
        """Handle one notice; seconds until it should be looked at again, or None when done."""
        try:
            advisory = json.loads(data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
            noticed_at = _timestamp(advisory.get("timestamp"))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable max-deliveries advisory dropped", extra={"error": str(exc)})
            return None
        try:
            return await self.dead_letter(seq, deliveries, noticed_at=noticed_at)
        except Exception:
            log.exception("max-deliveries dead letter failed; will retry", extra={"stream_seq": seq})
            return 1.0 + random.random()

    async def dead_letter(self, seq: int, deliveries: int, *, noticed_at: float | None = None) -> float | None:
        """Dead-letter JOBS message ``seq``; seconds until it should be looked at again, or None when done.

        None also when the message is gone already (acked, or handled by another scheduler), or
        when ``seq`` now names a message stored after the notice (JOBS was recreated since).
        """
        try:
            raw = await self._js.get_msg(JOBS, seq)
        except APIError as exc:
            if _gone(exc):
                return None
            raise
        stored_ns = stored_ns_of(raw.time)
        stored_at = stored_ns / 1e9
        if noticed_at is not None and stored_at > noticed_at + CLOCK_SKEW_S:
            log.warning("stale max-deliveries notice ignored: JOBS was recreated", extra={"stream_seq": seq})
            return None
        t = ticket_from(
            raw.subject or "",
            raw.data or b"",
            dict(raw.headers or {}),
            seq=seq,
            stored_ns=stored_ns,
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
        try:
            await self._js.delete_msg(JOBS, seq)
        except APIError as exc:
            if not _gone(exc):  # another scheduler deleted it first: done all the same
                raise
        return None


def _gone(exc: APIError) -> bool:
    """JetStream says there is no such message (404, or "no message found", err_code 10037 / 10057)."""
    return isinstance(exc, NotFoundError) or exc.err_code in (10037, 10057)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _timestamp(value: object) -> float | None:
    """An advisory's RFC 3339 timestamp (nanosecond digits and ``Z`` allowed) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00"))).timestamp()


async def _settle(ack: Awaitable[None]) -> None:
    """Ack, nak or term a notice; a lost one only means the notice comes back after ``ack_wait``."""
    with contextlib.suppress(Exception):
        await ack
