"""One way to connect to NATS for every role: named, reconnecting forever, quiet logs.

TLS: ``TETHER_NATS_CA`` names the CA file that signed the server's certificate
(``tether certs gen``); ``TETHER_NATS_CERT`` / ``TETHER_NATS_KEY`` add a client
certificate. Credentials travel in the URL: ``tls://user:password@host:4222``.
"""

from __future__ import annotations

import logging
import os
import re
import ssl

from nats.aio.client import Client

log = logging.getLogger(__name__)

#: Whitespace as ``str.isspace`` sees it in an ASCII header name (nats-py skips such names).
_NAME_SPACE = re.compile(rb"[\x09-\x0d\x1c-\x20]")


class TetherClient(Client):
    """nats-py's client with a cheaper header parser: every hot-path message carries headers.

    nats-py checks each header name for whitespace one character at a time in a
    generator (about 70 Python calls per message on Tether's headers); this does
    the same check with one regular-expression search per name and otherwise
    keeps nats-py's rules: lines without a colon, names that are not ASCII or
    contain whitespace are skipped, names and values are stripped, values are
    decoded as UTF-8 with replacement. ``tests/unit/test_connection_headers.py``
    compares the two on edge cases and random blocks.
    """

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            name = name.strip()
            if _NAME_SPACE.search(name) or not name.isascii():
                continue
            out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
        return out


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
    nc = TetherClient()
    await nc.connect(**opts)  # type: ignore[arg-type]
    return nc


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client TLS context trusting ``ca_file`` (plus a client certificate when configured)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    cert, key = os.environ.get("TETHER_NATS_CERT"), os.environ.get("TETHER_NATS_KEY")
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx
