"""One way to connect to NATS for every role: named, reconnecting forever, quiet logs.

TLS: ``TETHER_NATS_CA`` names the CA file that signed the server's certificate
(``tether certs gen``); ``TETHER_NATS_CERT`` / ``TETHER_NATS_KEY`` add a client
certificate. Credentials travel in the URL: ``tls://user:password@host:4222``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import ssl
from collections.abc import Callable

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.command import hpub_cmd

from tether.wire_parser import FastParser

log = logging.getLogger(__name__)

#: Whitespace as ``str.isspace`` sees it in an ASCII header name (nats-py skips such names).
_NAME_SPACE = re.compile(rb"[\x09-\x0d\x1c-\x20]")


#: Header names as read off the wire -> as parsed (False: skipped, as nats-py skips it); bounded.
_READ_NAMES: dict[bytes, str | bool] = {}

#: A message handler that runs to completion without awaiting (it may start tasks).
InlineHandler = Callable[[Msg], None]
#: Header names nats-py accepts (an RFC 7230 token); names seen once are remembered.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


class TetherClient(Client):
    """nats-py's client with cheaper headers and inline handlers: every hot-path message pays for these.

    **Inline handlers** (``subscribe_inline``): nats-py hands every message of a callback
    subscription to an ``asyncio.Queue`` read by one task per subscription, which then
    awaits the callback: a queue put and get, a task wake-up and a coroutine per message.
    A handler that never awaits (it resolves futures or starts tasks) is called straight
    from the read loop instead. Its exceptions are logged and do not reach the read loop.

    **Header block** (``_send_publish``): the same bytes nats-py writes, built as one
    string; names are checked once per distinct name, values translated only when they
    hold a line break. ``tests/unit/test_connection_headers.py`` compares both with
    nats-py's own code.

    **Protocol parser**: ``tether.wire_parser.FastParser`` reads the wire as nats-py's
    parser does, splitting the usual ``MSG``/``HMSG`` lines itself instead of trying two
    regular expressions on each (``tests/unit/test_wire_parser.py`` compares the two).

    **Header parser**: every hot-path message carries headers.

    nats-py checks each header name for whitespace one character at a time in a
    generator (about 70 Python calls per message on Tether's headers); this does
    the same check with one regular-expression search per name and otherwise
    keeps nats-py's rules: lines without a colon, names that are not ASCII or
    contain whitespace are skipped, names and values are stripped, values are
    decoded as UTF-8 with replacement. ``tests/unit/test_connection_headers.py``
    compares the two on edge cases and random blocks.

    **Reconnect listeners**: ``reconnect_listeners`` are called after each reconnect (a
    pull consumer's outstanding requests died with the old connection: it asks again at
    once instead of after they would have expired).
    """

    reconnect_listeners: list[Callable[[], None]]

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        names = _READ_NAMES
        for line in raw.split(b"\r\n"):
            raw_name, sep, value = line.partition(b":")
            if not sep:
                continue
            name = names.get(raw_name)
            if name is None:  # first seen: checked once (False: a name nats-py skips)
                stripped = raw_name.strip()
                name = False if _NAME_SPACE.search(stripped) or not stripped.isascii() else stripped.decode("ascii")
                if len(names) < 1024:
                    names[raw_name] = name
            if name is False:
                continue
            out[name] = value.strip().decode("utf-8", "replace")
        return out

    def __init__(self) -> None:
        super().__init__()
        self._ps = FastParser(self)  # same protocol reading, about 1.7x less time per message
        self._inline: dict[int, InlineHandler] = {}
        self._header_names: dict[str, str] = {}  # as given -> as sent (stripped, checked)

    async def subscribe_inline(
        self, subject: str, handler: InlineHandler, *, queue: str = ""
    ) -> Subscription:
        """Subscribe with ``handler`` called from the read loop for each message (see the class)."""
        sid = self._sid + 1  # subscribe() takes this id before it first awaits: register it first,
        self._inline[sid] = handler  # so no message can reach the subscription without its handler
        try:
            sub = await self.subscribe(subject, queue=queue)
        except BaseException:
            self._inline.pop(sid, None)
            raise
        if sub._id != sid:  # pragma: no cover - subscribe() changed its id scheme
            self._inline[sub._id] = self._inline.pop(sid)
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._inline.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        if sid not in self._subs:  # unsubscribed
            del self._inline[sid]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        hdr = await self._process_headers(headers) if headers else None
        msg = self._build_message(sid, subject, reply, data, hdr)
        try:
            handler(msg)
        except Exception:
            log.exception("message handler failed", extra={"subject": msg.subject})

    async def _request_new_style(
        self, subject: str, payload: bytes, timeout: float = 1, headers: dict[str, str] | None = None
    ) -> Msg:
        """nats-py's request, waiting with ``asyncio.timeout`` instead of ``asyncio.wait_for``.

        On Python 3.11 ``wait_for`` swallows a cancel that lands as the reply arrives
        (CPython issue 86296): a background loop writing to a KV bucket (SLI snapshots, leases)
        then went on running after its role's ``close()`` cancelled it, and the close waited
        for it forever. Awaiting the future itself never loses a cancel.
        """
        if self.is_draining_pubs:
            raise nats_errors.ConnectionDrainingError
        if not self._resp_sub_prefix:
            await self._init_request_sub()
        token = self._nuid.next()
        token.extend(secrets.token_hex(2).encode())
        key = token.decode()
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._resp_map.pop(key, None))
        self._resp_map[key] = future
        try:
            await self.publish(subject, payload, reply=(self._resp_sub_prefix + token).decode(), headers=headers)
        except BaseException:
            future.cancel()  # nobody will wait for it: its entry goes too
            raise
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise nats_errors.TimeoutError from None

    async def _send_publish(
        self, subject: str, reply: str, payload: bytes, payload_size: int, headers: dict[str, str] | None
    ) -> None:
        if headers is None:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        if subject == "":
            raise nats_errors.BadSubjectError
        block = ["NATS/1.0\r\n"]
        names = self._header_names
        for k, v in headers.items():
            name = names.get(k)
            if name is None:
                name = k.strip()
                if name and not _HEADER_NAME.fullmatch(name):
                    raise nats_errors.BadHeaderError(name)
                if len(names) < 1024:
                    names[k] = name
            if not name:
                continue  # nats-py skips empty names
            value = v.strip()
            if "\r" in value or "\n" in value:
                value = value.translate(_NEWLINES)
            block.append(f"{name}: {value}\r\n")
        block.append("\r\n")
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(hpub_cmd(subject, reply, "".join(block).encode(), payload))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


async def subscribe_inline(
    nc: Client, subject: str, handler: InlineHandler, *, queue: str = ""
) -> Subscription:
    """``handler`` for every message on ``subject``: inline on a ``TetherClient``, else as a callback."""
    if isinstance(nc, TetherClient):
        return await nc.subscribe_inline(subject, handler, queue=queue)

    async def cb(msg: Msg) -> None:
        handler(msg)

    return await nc.subscribe(subject, queue=queue, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)



async def connect(url: str, *, name: str, **options: object) -> Client:
    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc), "conn": name})

    async def on_disconnect() -> None:
        log.info("nats disconnected", extra={"conn": name})

    nc = TetherClient()
    nc.reconnect_listeners = []

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"conn": name})
        for listener in list(nc.reconnect_listeners):
            try:
                listener()
            except Exception:
                log.exception("reconnect listener failed", extra={"conn": name})

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
    await nc.connect(**opts)  # type: ignore[arg-type]
    return nc


async def drain_and_close(nc: Client) -> None:
    """Drain ``nc`` (its subscriptions' pending messages are handled, its publishes flushed), then make
    sure it is closed: a drain refused while reconnecting, or one whose flush fails, would leave the
    client reconnecting forever."""
    with contextlib.suppress(Exception):
        await nc.drain()
    if not nc.is_closed:
        with contextlib.suppress(Exception):
            await nc.close()


def tls_context(ca_file: str) -> ssl.SSLContext:
    """A client TLS context trusting ``ca_file`` (plus a client certificate when configured)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    cert, key = os.environ.get("TETHER_NATS_CERT"), os.environ.get("TETHER_NATS_KEY")
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx
