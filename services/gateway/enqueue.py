"""Putting a job into JOBS, and finding what an idempotency key already ran.

``publish_job`` stores the job once. A lost or late acknowledgement is retried
with the same ``Nats-Msg-Id`` (the stream's duplicate window keeps one copy)
within the request's budget; what JetStream refuses becomes an error a client
can act on: a full queue is ``no_capacity`` with ``retryAfterS``, a missing
stream or a broken connection ``store_unavailable``, and a publish never
confirmed a ``timeout`` that names the job, since it may run all the same.

``idempotent_job`` maps an idempotency key to the job that answers it. A key's
first job has the id ``idempotent_job_id(tenant, key)``. When that job ended
with an error worth retrying (``no_capacity``, ``timeout``, ``worker_failed``,
...), the same key runs again as ``<id>-r1``, then ``-r2``, up to
``MAX_GENERATIONS``: a client that retries with its key, as it should, gets a
new try instead of the stored refusal forever, and still never two runs at once
(concurrent retries publish the same id, which JOBS stores once).
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from schemas import ResultMessage
from streams import JOBS
from tether import subjects
from tether.errors import Conflict, NoCapacity, StoreError, Timeout
from tether.jetpub import Ack, JetPublisher
from tether.jobids import idempotent_job_id
from tether.results import fetch_final

#: JetStream's "the stream is at its limits" errors: messages, bytes, per-subject, resources.
QUEUE_FULL_ERR_CODES = frozenset({10077, 10078, 10047, 10023})
QUEUE_FULL_RETRY_AFTER_S = 1.0
#: How long one publish waits for its acknowledgement before it is sent again (same id).
ACK_WAIT_S = 2.0
MAX_GENERATIONS = 8


async def publish_job(
    publisher: JetPublisher,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    job_id: str,
    budget_s: float,
) -> Ack:
    """Store the job in JOBS, resending it while unconfirmed, for up to ``budget_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(budget_s, ACK_WAIT_S)
    unconfirmed = False  # an earlier send's acknowledgement was lost: the job may be stored already
    while True:
        wait = min(ACK_WAIT_S, max(0.05, deadline - loop.time()))
        try:
            return await publisher.publish(subject, payload, stream=JOBS, headers=headers, timeout=wait)
        except nats.errors.TimeoutError:
            unconfirmed = True
            if loop.time() >= deadline - 0.01:
                raise Timeout(
                    f"JetStream did not confirm the job within {budget_s:.0f}s; it may still run, and its "
                    f"result would be on {subjects.result_subject(job_id)}",
                    job_id=job_id,
                ) from None
            # Sent again with the same Nats-Msg-Id: JOBS keeps one copy whichever arrives.
        except nats.js.errors.NoStreamResponseError as exc:
            if unconfirmed:
                raise _maybe_stored(job_id, exc) from None
            raise StoreError(f"no JetStream stream takes {subject}: is the JOBS stream there?") from None
        except nats.js.errors.APIError as exc:
            if exc.err_code in QUEUE_FULL_ERR_CODES:
                raise NoCapacity(
                    f"the job queue is full ({exc.description}); retry later",
                    retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
                ) from None
            raise StoreError(f"JOBS refused the job: {exc.description or exc}") from None
        except nats.errors.Error as exc:  # connection closed, draining, outbound buffer full, ...
            if unconfirmed:
                raise _maybe_stored(job_id, exc) from None
            raise StoreError(f"could not queue the job: {type(exc).__name__}: {exc}") from None


def _maybe_stored(job_id: str, exc: Exception) -> Timeout:
    return Timeout(
        f"JetStream did not confirm the job ({type(exc).__name__} on a resend); it may still run, and its "
        f"result would be on {subjects.result_subject(job_id)}",
        job_id=job_id,
    )


async def idempotent_job(
    js: JetStreamContext, tenant_id: str, key: str
) -> tuple[str, ResultMessage | None]:
    """The job id that answers ``key`` now, and its stored final result when there is one to replay.

    ``(id, None)``: run (or join) the job ``id``. ``(id, result)``: answer with ``result``.
    """
    base = idempotent_job_id(tenant_id, key)
    job_id, final = base, None
    for generation in range(MAX_GENERATIONS):
        job_id = base if generation == 0 else f"{base}-r{generation}"
        final = await fetch_final(js, job_id)
        if final is None or not _worth_retrying(final):
            return job_id, final
    return job_id, final  # every generation failed: the last failure is the answer


def _worth_retrying(final: ResultMessage) -> bool:
    return final.status != "completed" and final.error is not None and final.error.retryable


def check_owner(result: ResultMessage, tenant_id: str) -> None:
    """A stored or arriving result answers a request only if it is that tenant's job.

    Job ids of idempotency keys are derived from tenant and key, so another tenant
    (a bare publish naming that ``jobId``) could run a job under one first; its
    result is never handed to this tenant.
    """
    if result.tenant_id != tenant_id:
        raise Conflict(
            "this idempotency key's job id is taken by another tenant's job; use another key",
            field="idempotencyKey",
        )
