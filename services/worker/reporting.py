"""Acks and attempt reports back to the schedulers, coalesced into ``ReportBatch`` messages.

Nothing here is on a client's latency path (the client gets its result from
RESULTS directly), so the reporter waits ``coalesce_s`` after the first item
before sending: under load one message carries many acks and reports, and an
ack whose attempt has already finished is dropped because the report implies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client

from schemas import AttemptReport, Dispatch, DispatchAck, ErrorInfo, ReportBatch
from tether import codec, subjects, telemetry
from tether.errors import TetherError

log = logging.getLogger(__name__)

#: How long the first queued item waits for company. Far below any ack timeout.
COALESCE_S = 0.002


class Reporter:
    def __init__(self, nc: Client, worker_id: str, *, coalesce_s: float = COALESCE_S) -> None:
        self._nc = nc
        self.worker_id = worker_id
        self._coalesce_s = coalesce_s
        self._acks: dict[str, list[tuple[str, int, TetherError | None]]] = {}  # (job, attempt, refusal)
        self._reports: dict[str, list[AttemptReport]] = {}
        self._wake = asyncio.Event()
        self.sent = 0

    def ack(self, report_to: str, job_id: str, attempt: int, refusal: TetherError | None) -> None:
        """Accept (``refusal`` None) or refuse an attempt; the ``DispatchAck`` is built only if it is sent."""
        self._acks.setdefault(report_to, []).append((job_id, attempt, refusal))
        self._wake.set()

    def report(self, report_to: str, report: AttemptReport) -> None:
        self._reports.setdefault(report_to, []).append(report)
        self._wake.set()

    def attempt_ended(self, d: Dispatch, started: float, err: TetherError | None) -> None:
        """Report how attempt ``d`` ended (``err`` None: it finished and its result is stored)."""
        self.report(
            d.report_to,
            AttemptReport(
                job_id=d.job_id,
                attempt=d.attempt,
                worker_id=self.worker_id,
                ok=err is None,
                error=ErrorInfo.model_validate(err.to_wire()) if err else None,
                started_at=started,
                finished_at=time.time(),
            ),
        )

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._coalesce_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        acks, self._acks = self._acks, {}
        reports, self._reports = self._reports, {}
        for report_to in acks.keys() | reports.keys():
            done = {(r.job_id, r.attempt) for r in reports.get(report_to, ())}
            batch = ReportBatch(
                worker_id=self.worker_id,
                acks=[
                    DispatchAck(
                        accepted=refusal is None,
                        worker_id=self.worker_id,
                        job_id=job_id,
                        attempt=attempt,
                        error=ErrorInfo.model_validate(refusal.to_wire()) if refusal else None,
                    )
                    for job_id, attempt, refusal in acks.get(report_to, ())
                    if (job_id, attempt) not in done
                ],
                reports=reports.get(report_to, []),
            )
            with contextlib.suppress(Exception):  # the scheduler's watchdog covers a lost report
                await self._nc.publish(
                    subjects.worker_report_subject(report_to, self.worker_id),
                    codec.encode(batch.wire(), codec.MSGPACK),
                    headers={**telemetry.child_headers(None), codec.CONTENT_TYPE: codec.MSGPACK},
                )
                self.sent += 1
