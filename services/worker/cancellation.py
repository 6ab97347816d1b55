"""Cancellation: ``tether.control.cancel.<job>`` stops a running job within one decoding step.

A ``CancelRequest`` without ``attempt`` (a client giving up) stops whichever attempt of
the job this worker runs; with ``attempt`` (a scheduler that re-placed the job) only that
attempt, so the new attempt elsewhere keeps going. The engine sees the token between
steps, drops the row and frees its batch slot.

A cancel can overtake its job: the scheduler sends the dispatch and, when the ack is
late, the cancel right after, and the two reach the worker on different subscriptions.
So a cancel for a job that is not running here is remembered for ``EARLY_TTL_S`` (every
worker hears every cancel; at most ``EARLY_MAX`` are kept) and applied when the job is
registered, which the worker does as it accepts the dispatch.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from schemas import CancelRequest
from services.worker.runtimes.base import CancelToken
from tether import codec
from tether.errors import Cancelled
from tether.expiring import ExpiringMap

log = logging.getLogger(__name__)

EARLY_TTL_S = 30.0
EARLY_MAX = 10_000


class CancelBoard:
    def __init__(self) -> None:
        self._running: dict[str, dict[int, CancelToken]] = {}
        self._early: ExpiringMap[tuple[str, int | None], str] = ExpiringMap(EARLY_TTL_S, EARLY_MAX)  # -> reason
        self.cancelled = 0

    def register(self, job_id: str, attempt: int) -> CancelToken:
        token = CancelToken()
        self._running.setdefault(job_id, {})[attempt] = token
        early = self._early.pop((job_id, attempt))
        if early is None:
            early = self._early.pop((job_id, None))
        if early is not None:
            token.cancel(early)
            self.cancelled += 1
            log.info("job cancelled before it started", extra={"job": job_id, "attempt": attempt})
        return token

    def release(self, job_id: str, attempt: int) -> None:
        attempts = self._running.get(job_id)
        if attempts is not None:
            attempts.pop(attempt, None)
            if not attempts:
                del self._running[job_id]

    def cancel(self, request: CancelRequest) -> bool:
        """Cancel the matching attempt(s) running here; otherwise remember the cancel for a while."""
        attempts = self._running.get(request.job_id, {})
        hits = [(a, t) for a, t in attempts.items() if request.attempt is None or a == request.attempt]
        if not hits:
            self._early.put((request.job_id, request.attempt), request.reason)
            return False
        for attempt, token in hits:
            token.cancel(request.reason)
            self.cancelled += 1
            log.info("job cancelled", extra={"job": request.job_id, "attempt": attempt, "reason": request.reason})
        return True

    async def on_message(self, msg: Msg) -> None:
        try:
            request = CancelRequest.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
        except Exception as exc:
            log.warning("malformed cancel request dropped", extra={"error": str(exc)})
            return
        self.cancel(request)


def raise_if_cancelled(cancel: CancelToken, job_id: str) -> None:
    """Raise ``Cancelled`` once the attempt was cancelled: it must not complete or publish a result.

    Checked before a job runs (a cancel that overtook its dispatch), after the runtime returns
    (runtimes that cannot stop midway: echo, embeddings, the naive one) and before the result is
    published; the generation engine also checks between decoding steps.
    """
    if cancel.cancelled:
        raise Cancelled(f"job {job_id} cancelled: {cancel.reason or 'cancelled'}", job_id=job_id)
