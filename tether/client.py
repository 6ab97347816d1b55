"""A small Python client for ``tether.infer`` (any NATS client in any language works the same way)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client

from tether import codec, subjects, telemetry
from tether.chunks import Reorder
from tether.errors import TetherError, error_from_wire
from tether.jobids import idempotent_job_id

#: How much longer than the gateway the client waits, so the gateway's own ``timeout`` reply (which
#: names the job, still running) reaches it instead of a bare NATS timeout.
REPLY_GRACE_S = 2.0


async def infer(
    nc: Client,
    *,
    model: str,
    input: Any,
    tenant: str = "demo",
    version: str = "1",
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    timeout: float = 300.0,
    encoding: str = codec.JSON,
) -> dict[str, Any]:
    """Send one request and return the reply dict; an error reply raises the matching ``TetherError``."""
    body: dict[str, Any] = {"tenantId": tenant, "modelId": model, "version": version, "input": input}
    if params:
        body["params"] = params
    if idempotency_key:
        body["idempotencyKey"] = idempotency_key
    headers = {**telemetry.child_headers(None), codec.CONTENT_TYPE: encoding}
    msg = await nc.request(
        subjects.INFER, codec.encode(body, encoding), timeout=timeout + REPLY_GRACE_S, headers=headers
    )
    reply = codec.decode(msg.data, codec.content_type_of(msg.headers))
    if isinstance(reply, dict) and "error" in reply:
        raise error_from_wire(reply["error"])
    if not isinstance(reply, dict):
        raise TetherError(f"unexpected reply: {reply!r}")
    return reply


async def infer_stream(
    nc: Client, *, tenant: str = "demo", idempotency_key: str | None = None, **request: Any
) -> AsyncIterator[str | dict[str, Any]]:
    """Yield token texts from ``tether.results.<job>.chunks`` in order, then the reply dict
    (``request``: the keyword arguments of ``infer``).

    The job id is derived from the idempotency key (a fresh one when none is given), so the
    chunk subscription exists before the request is sent and no chunk is missed.
    """
    key = idempotency_key or f"stream-{os.urandom(12).hex()}"
    job_id = idempotent_job_id(tenant, key)
    sub = await nc.subscribe(subjects.chunks_subject(job_id))
    reply_of = asyncio.ensure_future(infer(nc, tenant=tenant, idempotency_key=key, **request))
    order = Reorder()
    try:
        while not reply_of.done() or sub.pending_msgs:
            try:
                msg = await sub.next_msg(timeout=0.05)
            except TimeoutError:
                continue
            chunk = codec.decode(msg.data, codec.content_type_of(msg.headers))
            token_ids = chunk.get("tokenIds")
            for _, text in order.push(
                int(chunk["seq"]),
                str(chunk["text"]),
                attempt=int(chunk.get("attempt", 1)),
                offset=chunk.get("offset"),
                tokens=len(token_ids) if isinstance(token_ids, list) else None,
            ):
                yield text
        reply = await reply_of
        rest = order.remainder(reply.get("result"))
        if rest:
            yield rest  # what no chunk carried (a model that does not stream, like echo)
        yield reply
    finally:
        reply_of.cancel()
        await sub.unsubscribe()
