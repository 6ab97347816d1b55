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
        keep_late: bool = False,
    ) -> Ack:
        """Store ``payload`` on ``subject`` in ``stream``; the stream's acknowledgement, or an error.

        ``keep_late``: a timeout raises ``AckTimeout``, whose ``late`` future still receives the
        acknowledgement should it come after all (the caller ``forget()``s it when done).
        """
        if not self._prefix:
            await self._start()
        token = format(next(self._tokens), "x")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = fut
        timer = loop.call_later(timeout, _expire, fut)
        late: asyncio.Future[Msg] | None = None
        try:
            await self._nc.publish(
                subject,
                payload,
                reply=self._prefix + token,
                headers={**(headers or {}), EXPECTED_STREAM: stream},
            )
            msg = await fut
        except nats.errors.TimeoutError:
            if keep_late and self._waiting.get(token) is fut:  # expired, not answered: wait on for it
                late = self._waiting[token] = loop.create_future()
                raise AckTimeout(self, token, late) from None
            raise
        finally:
            timer.cancel()
            if late is None:
                self._waiting.pop(token, None)
        return _read_ack(msg)

    def _forget(self, token: str, late: asyncio.Future[Msg]) -> None:
        if self._waiting.get(token) is late:
            del self._waiting[token]


class AckTimeout(nats.errors.TimeoutError):
    """No acknowledgement within the timeout; ``late`` gets it if it still comes (the publish reached
    a server that stalled, say). ``forget()`` stops waiting for it."""

    def __init__(self, publisher: JetPublisher, token: str, late: asyncio.Future[Msg]) -> None:
        super().__init__()
        self._publisher = publisher
        self._token = token
        self.late = late

    def ack(self) -> Ack | None:
        """The late acknowledgement, if it has come (an error reply raises as ``publish`` would)."""
        return _read_ack(self.late.result()) if self.late.done() else None

    def forget(self) -> None:
        self._publisher._forget(self._token, self.late)


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
