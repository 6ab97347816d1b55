"""A client that hangs up: its wait ends, and its job is cancelled when nobody else wants it.

A streamed request notices the hang-up when a write fails (``JobStream.close``); a plain one
would wait for its result with nobody left to read it, while a worker spends its time on
the job. ``infer_while_connected`` waits for the result and for the connection's
``http.disconnect`` together; whichever comes first ends the wait. ``cancel_abandoned``
is what both then do with the job: a job with an idempotency key is left running (its
client declared it may come back for the result, and other requests with the key may be
waiting on it), and so is one another request on this gateway still waits for; any other
gets ``tether.control.cancel.<job>``.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import Request
from starlette.requests import ClientDisconnect

from schemas import CancelRequest, InferReply, InferRequest
from services.gateway.service import Gateway
from tether import codec, subjects

REASON = "client disconnected"


async def cancel_abandoned(gateway: Gateway, req: InferRequest, job_id: str) -> None:
    """Cancel ``job_id`` unless it has an idempotency key or another request here waits for it."""
    if req.idempotency_key is not None or gateway.waiting_on(job_id) or gateway.nc is None:
        return
    cancel = CancelRequest(job_id=job_id, reason=REASON)
    with contextlib.suppress(Exception):
        await gateway.nc.publish(
            subjects.control_subject("cancel", job_id),
            codec.encode(cancel.wire()),
            headers={codec.CONTENT_TYPE: codec.JSON},
        )


async def infer_while_connected(
    request: Request, gateway: Gateway, req: InferRequest, headers: dict[str, str]
) -> InferReply:
    """``gateway.infer`` until the result, or until the client hangs up (raises ``ClientDisconnect``)."""
    job_id: str | None = None

    async def on_job(jid: str) -> None:
        nonlocal job_id
        job_id = jid

    infer = asyncio.ensure_future(gateway.infer(req, headers, on_job=on_job))
    gone = asyncio.ensure_future(_hung_up(request))
    try:
        await asyncio.wait({infer, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not infer.done() and gone.exception() is not None:
            await infer  # the connection could not be watched: wait for the answer alone
    finally:
        gone.cancel()
        if not infer.done():
            infer.cancel()
            with contextlib.suppress(BaseException):
                await infer
    if not infer.cancelled():
        return infer.result()  # the reply, or the final error as its TetherError
    if job_id is not None:
        await cancel_abandoned(gateway, req, job_id)
    raise ClientDisconnect()


async def _hung_up(request: Request) -> None:
    """Returns when the connection closes. The body has been read: the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
