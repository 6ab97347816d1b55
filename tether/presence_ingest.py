"""Presence ingest: NATS heartbeats into a FleetView, signatures checked in a process pool.

One Ed25519 verification costs ~70-100 us on a commodity core, several times
the rest of a heartbeat's admission, so one core caps a receiver at about
10,000 heartbeats/s. Under load the signature checks of each batch go to
``workers`` pool processes (``tether.sigcheck``) while the event loop keeps
the order-sensitive work: the cheap checks before (``PresenceGate.prepare``),
and the nonce record, decode and fleet update after (``PresenceGate.complete``).
Batches are pipelined, so the pool checks one batch while the loop prepares the
next and completes the one before. (Threads do not help: libsodium releases
the GIL, but every check must take it back, and a busy loop holds it.) The pool
starts when a backlog of ``MIN_PARALLEL`` messages builds up, so a small fleet's
trickle of heartbeats never spawns it.

Messages wait in a bounded queue; past ``max_queue`` new ones are dropped and
counted in ``dropped`` (the next heartbeat replaces a dropped one), so a flood
cannot grow memory without bound. The loop yields between batches, and checks
signatures itself only ``LOOP_BATCH`` at a time, so a flood of forgeries delays
placement by a couple of milliseconds at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from tether import subjects
from tether.envelope import EnvelopeRejected, signature_ok
from tether.sigcheck import SigChecker
from tether.signed import Admission

if TYPE_CHECKING:
    from tether.fleet import FleetView

log = logging.getLogger(__name__)

_MODELS = f"{subjects.PREFIX}.models."
#: Messages taken from the queue per round while helper processes check signatures.
BATCH = 128
#: ... and while the event loop checks them itself: small, so other work runs in between.
LOOP_BATCH = 16
#: Batches whose signatures may be in checking at once (the pipeline's depth).
PIPELINE = 2
#: A backlog of this many messages starts the helper processes; smaller batches are checked on
#: the loop (cheaper than a process hop).
MIN_PARALLEL = 32
#: A batch the helpers have not answered in this long: they are taken as hung, killed (new ones start
#: at the next backlog) and the batch is checked on the loop. A batch takes them milliseconds.
HELPER_TIMEOUT_S = 5.0


def _items(admissions: list[Admission]) -> list[tuple[bytes, bytes, bytes]]:
    return [(a.pending.envelope.public_key, a.pending.signed, a.pending.envelope.signature) for a in admissions]


def _check_here(admissions: list[Admission]) -> list[bool]:
    return [signature_ok(a.pending) for a in admissions]


class PresenceIngest:
    """Admits ``(subject, data)`` pairs into ``fleet`` in arrival order, in batches."""

    def __init__(self, fleet: FleetView, *, workers: int = 1, max_queue: int = 100_000) -> None:
        self.fleet = fleet
        self.workers = max(0, workers)
        self.max_queue = max_queue
        self._queue: deque[tuple[str, bytes]] = deque()  # model announcements
        #: Heartbeats, queued and taken before announcements: a flood on ``tether.models.>`` (where any
        #: worker may publish, naming any worker's key) cannot crowd out the fleet's heartbeats.
        self._beats: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._checkers: list[SigChecker] = []
        self._starting: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.received = 0
        self.admitted = 0
        self.dropped = 0
        self.rounds = 0  # batches taken from the queue (received / rounds: the mean batch)

    def submit(self, subject: str, data: bytes) -> None:
        """Queue one message (called from the subscription callback; never blocks)."""
        self.received += 1
        queue = self._queue if subject.startswith(_MODELS) else self._beats
        if len(queue) >= self.max_queue:
            self.dropped += 1
            return
        queue.append((subject, data))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="presence-ingest")

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._beats)

    def _take(self, n: int) -> list[tuple[str, bytes]]:
        beats = [self._beats.popleft() for _ in range(min(n, len(self._beats)))]
        return beats + [self._queue.popleft() for _ in range(min(n - len(beats), len(self._queue)))]

    @property
    def helpers(self) -> list[SigChecker]:
        """The signature-check helper processes running now."""
        return [c for c in self._checkers if c.alive]

    async def _run(self) -> None:
        """Rounds in a pipeline: while one batch's signatures are checked on the pool, the loop
        prepares the next and completes the one before, so neither the pool nor the loop waits."""
        inflight: deque[tuple[list[Admission], asyncio.Future[list[bool]]]] = deque()
        while True:
            if not self.pending and not inflight:
                await self._wake.wait()
                self._wake.clear()
            while self.pending and len(inflight) < PIPELINE:
                self._start_helpers_if_needed()
                batch = self._take(BATCH if self.helpers else LOOP_BATCH)
                self.rounds += 1
                admissions = self._prepare(batch)
                inflight.append((admissions, self._check(admissions)))
            if not inflight:
                continue
            admissions, checking = inflight.popleft()
            try:
                valid = await checking
                for adm, ok in zip(admissions, valid, strict=True):
                    if self.fleet.admit(adm, ok):
                        self.admitted += 1
            except Exception:  # one bad round must not stop presence for good
                log.exception("presence ingest round failed")
            await asyncio.sleep(0)  # placement and everything else run between batches

    def _prepare(self, batch: list[tuple[str, bytes]]) -> list[Admission]:
        gate = self.fleet.gate
        admissions: list[Admission] = []
        for subject, data in batch:
            with contextlib.suppress(EnvelopeRejected):  # counted and logged by the gate
                admissions.append(gate.prepare(subject, data))
        return admissions

    def _check(self, admissions: list[Admission]) -> asyncio.Future[list[bool]]:
        """The batch's signature checks, split over the helper processes (on the loop when the
        batch is small, no helpers are configured, or they are still starting)."""
        loop = asyncio.get_running_loop()
        checkers = self.helpers
        if not checkers or len(admissions) < MIN_PARALLEL:
            done: asyncio.Future[list[bool]] = loop.create_future()
            done.set_result(_check_here(admissions))
            return done
        items = _items(admissions)
        step = -(-len(items) // len(checkers))
        parts = [c.check(items[i * step : (i + 1) * step]) for i, c in enumerate(checkers) if i * step < len(items)]

        async def joined() -> list[bool]:
            try:
                answers = await asyncio.wait_for(asyncio.gather(*parts), HELPER_TIMEOUT_S)
                return [ok for part in answers for ok in part]
            except Exception as e:  # a helper died or hangs: check this batch here; the next starts new ones
                log.warning("signature check process failed", extra={"error": repr(e)})
                for c in checkers:
                    c.kill()
                return _check_here(admissions)

        return asyncio.ensure_future(joined())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        checkers, self._checkers = self._checkers, []
        for c in checkers:
            await c.stop()

    def _start_helpers_if_needed(self) -> None:
        """Start the helpers when a backlog of ``MIN_PARALLEL`` builds up and none are running."""
        if self.workers and self._starting is None and self.pending >= MIN_PARALLEL and not self.helpers:
            self._starting = asyncio.get_running_loop().create_task(self._start_checkers(), name="sigcheck-start")

    async def _start_checkers(self) -> None:
        """Start the helper processes (once, at the first batch under load; again if they died)."""
        try:
            for c in self._checkers:
                await c.stop()
            self._checkers = []
            for _ in range(self.workers):
                c = SigChecker()
                await c.start()
                self._checkers.append(c)
            log.info("presence signature checks moved to helper processes", extra={"processes": self.workers})
        except Exception as e:  # checks go on in the event loop
            log.warning("cannot start signature check processes", extra={"error": str(e)})
        finally:
            self._starting = None
