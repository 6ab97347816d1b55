"""Cancellation: ``tether.control.cancel.<job>`` stops a running job within one decoding step.

A ``CancelRequest`` without ``attempt`` (a client giving up) stops whichever attempt of
the job this worker runs; with ``attempt`` (a scheduler that re-placed the job) only that
attempt, so the new attempt elsewhere keeps going. The engine sees the token between
steps, drops the row and frees its batch slot.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from schemas import CancelRequest
from services.worker.runtimes.base import CancelToken
from tether import codec

log = logging.getLogger(__name__)


class CancelBoard:
    def __init__(self) -> None:
        self._running: dict[str, tuple[int, CancelToken]] = {}
        self.cancelled = 0

    def register(self, job_id: str, attempt: int) -> CancelToken:
        token = CancelToken()
        self._running[job_id] = (attempt, token)
        return token

    def release(self, job_id: str, attempt: int) -> None:
        held = self._running.get(job_id)
        if held is not None and held[0] == attempt:
            del self._running[job_id]

    def cancel(self, request: CancelRequest) -> bool:
        held = self._running.get(request.job_id)
        if held is None or (request.attempt is not None and request.attempt != held[0]):
            return False
        held[1].cancel(request.reason)
        self.cancelled += 1
        log.info("job cancelled", extra={"job": request.job_id, "attempt": held[0], "reason": request.reason})
        return True

    async def on_message(self, msg: Msg) -> None:
        try:
            request = CancelRequest.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
        except Exception as exc:
            log.warning("malformed cancel request dropped", extra={"error": str(exc)})
            return
        self.cancel(request)
