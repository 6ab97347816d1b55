"""A small Python client for ``tether.infer`` (any NATS client in any language works the same way)."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

from tether import codec, subjects, telemetry
from tether.errors import TetherError, error_from_wire


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
