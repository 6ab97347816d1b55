"""The one final result per job: publish it into RESULTS exactly once, read it back.

Every publisher of a final result (the worker on success, the scheduler on a
final error or dead letter) goes through ``publish_final``: the
``Nats-Msg-Id`` header ``result:<job>`` makes JetStream keep only the first
final result for a job inside the duplicate window, so two attempts racing to
finish still leave one result in the stream.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from schemas import ResultMessage
from streams import RESULTS
from tether import codec, subjects
from tether.errors import PayloadTooLarge
from tether.jetpub import DEFAULT_TIMEOUT_S, Ack, AckTimeout, JetPublisher

DEDUPE_PREFIX = "result:"


#: After a try without an acknowledgement, how long a retry waits for that try's late acknowledgement
#: (once the server answers again) before sending the result a second time.
LATE_ACK_GRACE_S = 0.5


async def publish_final(
    js: JetStreamContext, result: ResultMessage, headers: dict[str, str], *, budget_s: float = 30.0
) -> bool:
    """Store ``result`` in RESULTS, retrying through brief outages. False when one was already there
    (possibly this call's own earlier try, whose acknowledgement was lost).

    A try that times out may still reach the stream (a server that stalled, bytes sent on
    reconnect): JetStream would store a resend once, but core subscribers of the subject would
    get the result twice. So before sending again a retry looks for the result in RESULTS and
    waits ``LATE_ACK_GRACE_S`` for the earlier tries' late acknowledgements, and sends only when
    neither shows the result arrived.
    """
    hdrs = {**headers, codec.CONTENT_TYPE: codec.JSON, "Nats-Msg-Id": DEDUPE_PREFIX + result.job_id}
    payload = codec.encode(result.wire())
    subject = subjects.result_subject(result.job_id)
    publisher = JetPublisher.of(js)
    unanswered: list[AckTimeout] = []  # tries whose acknowledgement may still come
    timed_out = False  # some try went unanswered (its ack may have come just as it gave up)
    t0 = time.monotonic()

    async def send() -> Ack:
        nonlocal timed_out
        left = budget_s - (time.monotonic() - t0)
        try:
            return await publisher.publish(
                subject, payload, stream=RESULTS, headers=hdrs, keep_late=True,
                timeout=max(0.1, min(DEFAULT_TIMEOUT_S, left)),
            )
        except nats.errors.TimeoutError as exc:
            timed_out = True
            if isinstance(exc, AckTimeout):
                unanswered.append(exc)
            raise
        except Exception as exc:
            _raise_if_permanent(exc, len(payload))
            raise

    try:
        try:  # the common case: one publish, no retry machinery
            return not (await send()).duplicate
        except PayloadTooLarge:
            raise
        except Exception:
            if time.monotonic() - t0 >= budget_s:
                raise
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(max(0.0, budget_s - (time.monotonic() - t0))),
            wait=wait_exponential_jitter(initial=0.05, max=2.0),
            # Exceptions only: a cancel (a BaseException) ends the call instead of being retried
            retry=retry_if_exception(lambda e: isinstance(e, Exception) and not isinstance(e, PayloadTooLarge)),
            reraise=True,
        ):
            with attempt:
                if timed_out:
                    if await fetch_final(js, result.job_id) is not None:  # also: the server answers again
                        return False
                    late = await _late_ack(unanswered, LATE_ACK_GRACE_S, len(payload))
                    if late is not None:
                        return not late.duplicate
                ack = await send()
        return not ack.duplicate
    finally:
        for timeout in unanswered:
            timeout.forget()


async def _late_ack(unanswered: list[AckTimeout], grace_s: float, size: int) -> Ack | None:
    """The first late acknowledgement of an earlier try, waiting up to ``grace_s`` for one. A late
    error reply is that try's answer: it is dropped (the caller sends again), or raised if permanent."""
    if not unanswered:
        return None
    await asyncio.wait([t.late for t in unanswered], timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
    for t in list(unanswered):
        try:
            ack = t.ack()
        except Exception as exc:
            _raise_if_permanent(exc, size)
            t.forget()
            unanswered.remove(t)
            continue
        if ack is not None:
            return ack
    return None


#: JetStream's "message larger than the stream allows".
_TOO_LARGE_ERR_CODES = frozenset({10054})


def _raise_if_permanent(exc: Exception, size: int) -> None:
    """A result too large for the server or the stream fails the same way every time: say so at once."""
    too_large = isinstance(exc, MaxPayloadError) or (
        isinstance(exc, APIError) and exc.err_code in _TOO_LARGE_ERR_CODES
    )
    if too_large:
        raise PayloadTooLarge(
            f"the result is {size} bytes, more than NATS or the RESULTS stream accepts; ask for less "
            "(fewer inputs, fewer tokens) or raise the server's max_payload",
            field="result",
        ) from exc


async def fetch_final(js: JetStreamContext, job_id: str) -> ResultMessage | None:
    """The stored final result of ``job_id``, or None (direct get: any replica answers)."""
    try:
        raw = await js.get_last_msg(RESULTS, subjects.result_subject(job_id), direct=True)
    except NotFoundError:
        return None
    if not raw.data:
        return None
    return ResultMessage.model_validate(codec.decode(raw.data, codec.content_type_of(raw.headers)))


def error_result(
    *,
    job_id: str,
    tenant_id: str,
    model_id: str,
    version: str,
    error: dict[str, object],
    status: str,
    attempts: int = 0,
    worker_id: str | None = None,
) -> ResultMessage:
    return ResultMessage.model_validate(
        {
            "jobId": job_id,
            "status": status,
            "tenantId": tenant_id,
            "modelId": model_id,
            "version": version,
            "error": {**error, "jobId": job_id},
            "workerId": worker_id,
            "attempts": attempts,
            "finishedAt": time.time(),
        }
    )
