"""One way to connect to NATS for every role: named, reconnecting forever, quiet logs.

TLS: ``TETHER_NATS_CA`` names the CA file that signed the server's certificate
(``tether certs gen``); ``TETHER_NATS_CERT`` / ``TETHER_NATS_KEY`` add a client
certificate. Credentials travel in the URL: ``tls://user:password@host:4222``.
"""

from __future__ import annotations

import logging
import os
import ssl

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
    if os.environ.get("TETHER_NATS_CA") and "tls" not in options:
        opts["tls"] = tls_context(os.environ["TETHER_NATS_CA"])
    opts.update(options)
    return await nats.connect(**opts)  # type: ignore[arg-type]


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client TLS context trusting ``ca_file`` (plus a client certificate when configured)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    cert, key = os.environ.get("TETHER_NATS_CERT"), os.environ.get("TETHER_NATS_KEY")
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx
