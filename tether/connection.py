"""One way to connect to NATS for every role: named, reconnecting forever, quiet logs."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

log = logging.getLogger(__name__)


async def connect(url: str, *, name: str, **options: object) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc), "conn": name})

    async def on_disconnect() -> None:
        log.info("nats disconnected", extra={"conn": name})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"conn": name})

    opts: dict[str, object] = {
        "servers": [u.strip() for u in url.split(",")],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "pending_size": 64 * 1024 * 1024,
        "flush_timeout": 10,
    }
    opts.update(options)
    return await nats.connect(**opts)  # type: ignore[arg-type]
