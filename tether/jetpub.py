"""Publish into a JetStream stream and wait for its acknowledgement, on the hot path.

``nats.js.JetStreamContext.publish`` is a full request: a fresh NUID and random
token per call, an ``asyncio.wait_for`` around the reply, and a dataclass built
from the PubAck. The gateway (one publish per job into JOBS) and the worker
(one per job into RESULTS) do this for every job, so ``JetPublisher`` keeps
one wildcard inbox per connection and a counter for reply tokens, arms one
timer per publish, and reads only the three PubAck fields Tether uses. The
wire exchange is the same one: the message with a ``Nats-Expected-Stream``
header and a reply subject, answered by the stream's PubAck or error.

Errors keep nats-py's types (``APIError`` subclasses, ``NoStreamResponseError``,
``nats.errors.TimeoutError``) so callers handle them as before.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import weakref
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from tether.connection import subscribe_inline

EXPECTED_STREAM = "Nats-Expected-Stream"
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Ack:
    stream: str
    seq: int
    duplicate: bool


class JetPublisher:
    """One per connection (``JetPublisher.of``): publishes wait on futures keyed by reply token."""

    _by_client: weakref.WeakKeyDictionary[Client, JetPublisher] = weakref.WeakKeyDictionary()

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)
        self._starting = asyncio.Lock()

    @classmethod
    def of(cls, conn: Client | JetStreamContext) -> JetPublisher:
        nc: Client = conn._nc if isinstance(conn, JetStreamContext) else conn  # type: ignore[attr-defined]
        pub = cls._by_client.get(nc)
        if pub is None:
            pub = cls._by_client[nc] = cls(nc)
        return pub

    @property
    def waiting(self) -> int:
        """Publishes still waiting for their acknowledgement."""
        return len(self._waiting)

    async def _start(self) -> None:
        async with self._starting:
            if self._prefix:
                return
            prefix = self._nc.new_inbox() + "."
            await subscribe_inline(self._nc, prefix + "*", self._on_ack)
            self._prefix = prefix

    def _on_ack(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        stream: str,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Ack:
        """Store ``payload`` on ``subject`` in ``stream``; the stream's acknowledgement, or an error."""
        if not self._prefix:
            await self._start()
        token = format(next(self._tokens), "x")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = fut
        timer = loop.call_later(timeout, _expire, fut)
        try:
            await self._nc.publish(
                subject,
                payload,
                reply=self._prefix + token,
                headers={**(headers or {}), EXPECTED_STREAM: stream},
            )
            msg = await fut
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        return _read_ack(msg)


def _expire(fut: asyncio.Future[Msg]) -> None:
    if not fut.done():
        fut.set_exception(nats.errors.TimeoutError())


#: nats-server's PubAck, e.g. ``{"stream":"JOBS","seq":42}``, with ``"domain":"hub"`` after the
#: sequence and ``"duplicate": true`` (the server writes a space there) when they apply. Anything
#: else (errors, new fields) is read as JSON.
_PLAIN_ACK = re.compile(
    rb'\{"stream":"([A-Za-z0-9_-]+)","seq":(\d+)(?:,"domain":"[^"\\]*")?(,"duplicate": ?true)?\}\Z'
)


def _read_ack(msg: Msg) -> Ack:
    if not msg.data:
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.js.errors.NoStreamResponseError
        raise nats.js.errors.APIError(description="empty acknowledgement")
    fast = _PLAIN_ACK.match(msg.data)
    if fast is not None:  # the common PubAck, read without building a dict
        return Ack(stream=fast[1].decode(), seq=int(fast[2]), duplicate=fast[3] is not None)
    resp = json.loads(msg.data)
    if "error" in resp:
        raise nats.js.errors.APIError.from_error(resp["error"])
    return Ack(stream=resp.get("stream", ""), seq=int(resp.get("seq", 0)), duplicate=bool(resp.get("duplicate")))
