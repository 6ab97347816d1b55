"""A small Python client for ``tether.infer`` (any NATS client in any language works the same way)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from tether import codec, subjects, telemetry
from tether.errors import TetherError, error_from_wire
from tether.jobids import idempotent_job_id


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
    msg = await nc.request(subjects.INFER, codec.encode(body, encoding), timeout=timeout, headers=headers)
    reply = codec.decode(msg.data, codec.content_type_of(msg.headers))
    if isinstance(reply, dict) and "error" in reply:
        raise error_from_wire(reply["error"])
    if not isinstance(reply, dict):
        raise TetherError(f"unexpected reply: {reply!r}")
    return reply


async def infer_stream(
    nc: Client,
    *,
    model: str,
    input: Any,
    on_chunk: Callable[[dict[str, Any]], None],
    tenant: str = "demo",
    version: str = "1",
    params: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Like ``infer``, and calls ``on_chunk`` with each streamed chunk (``ResultChunk``) as it arrives.

    The job id follows from the idempotency key (a fresh one when none is given), so the
    chunk subject ``tether.results.<job>.chunks`` is subscribed before the request leaves.
    Chunks are passed on in ``seq`` order, once each (a resumed attempt continues the sequence).
    """
    key = idempotency_key or f"stream-{os.urandom(12).hex()}"
    job_id = idempotent_job_id(tenant, key)
    expected = 0
    early: dict[int, dict[str, Any]] = {}

    async def on_msg(msg: Msg) -> None:
        nonlocal expected
        chunk = codec.decode(msg.data, codec.content_type_of(msg.headers))
        seq = int(chunk.get("seq", -1))
        if seq < expected:
            return
        early[seq] = chunk
        while expected in early:
            on_chunk(early.pop(expected))
            expected += 1

    sub = await nc.subscribe(subjects.chunks_subject(job_id), cb=on_msg)
    try:
        reply = await infer(
            nc, model=model, input=input, tenant=tenant, version=version, params=params,
            idempotency_key=key, timeout=timeout,
        )  # fmt: skip
        await nc.flush()
    finally:
        await sub.unsubscribe()
    return reply
