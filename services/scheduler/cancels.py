"""Job-wide cancels the scheduler keeps, so a job cancelled while it waits in JOBS never runs.

A ``CancelRequest`` on ``tether.control.cancel.<job>`` without an attempt (a client, or the
gateway when a streaming client hangs up) stops the job where it runs. A job that runs
nowhere yet (waiting in JOBS for capacity, or between attempts) has no worker to stop it:
workers keep an early cancel only briefly and a worker started later never heard it. Every
scheduler therefore listens too (no queue group: whichever holds the job next must know) and
keeps the cancel for as long as the job can still wait (``queue_wait_s + job_lease_s``, plus
a minute); placement ends such a job with the final error ``cancelled`` instead of
dispatching it. A scheduler's own attempt cancels (``attempt`` set) are not job-wide and are
not kept.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import CancelRequest
from tether import codec, subjects
from tether.expiring import ExpiringMap

#: Cancels kept at most (the oldest go first): a flood of cancels cannot grow the scheduler without bound.
MAX_KEPT = 100_000


class JobCancels:
    def __init__(self, keep_s: float) -> None:
        self._kept: ExpiringMap[str, str] = ExpiringMap(keep_s, MAX_KEPT)  # job id -> reason
        self._sub: Subscription | None = None

    async def start(self, nc: Client) -> None:
        self._sub = await nc.subscribe(subjects.control_wildcard("cancel"), cb=self._on_message)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    def reason_for(self, job_id: str) -> str | None:
        """Why ``job_id`` was cancelled, when a job-wide cancel for it is still kept; else None."""
        return self._kept.get(job_id)

    def add(self, request: CancelRequest) -> None:
        if request.attempt is None:
            self._kept.put(request.job_id, request.reason)

    async def _on_message(self, msg: Msg) -> None:
        try:
            request = CancelRequest.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
        except Exception:  # cancels nothing; the workers log it
            return
        self.add(request)
