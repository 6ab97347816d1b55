"""Dispatch to workers in per-turn batches; route their acks and reports back to waiting attempts.

Every assignment made during one event-loop turn for the same worker leaves as
one ``DispatchBatch`` on ``tether.dispatch.<worker>`` (the sender task wakes on
the next turn, so batching adds no latency). Workers answer on this
scheduler's ``tether.reports.<scheduler>`` with ``ReportBatch`` messages that
carry acks (accept / refuse) and final attempt reports; each resolves the
``AttemptWatch`` of its ``(job, attempt)``. A report implies acceptance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import AttemptReport, Dispatch, DispatchAck, DispatchBatch, ReportBatch
from tether import codec, subjects, telemetry
from tether.connection import subscribe_inline
from tether.dispatch_auth import DispatchSigner

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AttemptWatch:
    """What the scheduler waits on for one attempt: the worker's ack, then its report."""

    worker_id: str
    sent_at: float = field(default_factory=time.monotonic)
    accepted: asyncio.Future[DispatchAck] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    report: asyncio.Future[AttemptReport] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Dispatcher:
    def __init__(
        self,
        nc: Client,
        scheduler_id: str,
        signer: DispatchSigner,
        worker_key: Callable[[str], bytes | None] = lambda _: None,
    ) -> None:
        self._nc = nc
        self._signer = signer
        self._worker_key = worker_key  # a worker's public key (from its signed heartbeats), for the seal
        self.scheduler_id = scheduler_id
        self.report_to = subjects.report_subject(scheduler_id)
        self._watches: dict[tuple[str, int], AttemptWatch] = {}
        self._rtt: dict[str, float] = {}  # worker -> smoothed dispatch-to-ack seconds
        self._outbox: dict[str, list[Dispatch]] = {}
        self._wake = asyncio.Event()
        self._sub = None
        self.batches = 0
        self.dispatched = 0
        self.forged = 0  # report items dropped: not from the worker their attempt was dispatched to

    async def start(self) -> None:
        self._sub = await subscribe_inline(self._nc, f"{self.report_to}.*", self._on_reports)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def submit(self, worker_id: str, d: Dispatch) -> AttemptWatch:
        """Queue ``d`` for ``worker_id``; it leaves with this turn's batch."""
        watch = AttemptWatch(worker_id)
        self._watches[(d.job_id, d.attempt)] = watch
        self._outbox.setdefault(worker_id, []).append(d)
        self._wake.set()
        return watch

    def rtt(self, worker_id: str) -> float | None:
        """Smoothed dispatch-to-ack round trip to ``worker_id`` (None before the first ack)."""
        return self._rtt.get(worker_id)

    def _sample_rtt(self, watch: AttemptWatch) -> None:
        sample = time.monotonic() - watch.sent_at
        old = self._rtt.get(watch.worker_id)
        self._rtt[watch.worker_id] = sample if old is None else 0.8 * old + 0.2 * sample

    def forget(self, job_id: str, attempt: int) -> None:
        self._watches.pop((job_id, attempt), None)

    async def run(self) -> None:
        """The sender: one batch per worker per wake-up."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            outbox, self._outbox = self._outbox, {}
            for worker_id, items in outbox.items():
                await self._send(worker_id, items)

    async def _send(self, worker_id: str, items: list[Dispatch]) -> None:
        batch = DispatchBatch(scheduler_id=self.scheduler_id, report_to=self.report_to, items=items)
        try:
            await self._nc.publish(
                subjects.dispatch_subject(worker_id),
                self._signer.seal(worker_id, codec.encode(batch.wire(), codec.MSGPACK), self._worker_key(worker_id)),
                headers={
                    **telemetry.child_headers(items[0].trace),
                    codec.CONTENT_TYPE: self._signer.content_type,
                },
            )
        except Exception as exc:  # the ack timeout re-places these attempts
            log.warning("dispatch publish failed", extra={"worker": worker_id, "error": repr(exc)})
            return
        self.batches += 1
        self.dispatched += len(items)

    def _on_reports(self, msg: Msg) -> None:
        try:
            sender = subjects.worker_from_report_subject(msg.subject)
            batch = ReportBatch.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
        except Exception as exc:
            log.warning("malformed report batch dropped", extra={"error": str(exc)})
            return
        if batch.worker_id != sender:
            self._forged(sender, f"a batch in the name of {batch.worker_id}")
            return
        for ack in batch.acks:
            watch = self._watches.get((ack.job_id, ack.attempt))
            if watch is None or watch.accepted.done():
                continue
            if watch.worker_id != sender or ack.worker_id != sender:
                self._forged(sender, f"an ack for {ack.job_id}#{ack.attempt}, dispatched to {watch.worker_id}")
                continue
            self._sample_rtt(watch)
            watch.accepted.set_result(ack)
        for report in batch.reports:
            watch = self._watches.get((report.job_id, report.attempt))
            if watch is None:
                continue
            if watch.worker_id != sender or report.worker_id != sender:
                self._forged(
                    sender, f"a report for {report.job_id}#{report.attempt}, dispatched to {watch.worker_id}"
                )
                continue
            if not watch.accepted.done():
                watch.accepted.set_result(
                    DispatchAck(
                        accepted=True, worker_id=report.worker_id, job_id=report.job_id, attempt=report.attempt
                    )
                )
            if not watch.report.done():
                watch.report.set_result(report)

    def _forged(self, sender: str, what: str) -> None:
        self.forged += 1
        log.warning("report dropped: not from the attempt's worker", extra={"sender": sender, "item": what})
