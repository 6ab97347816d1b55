"""A continuous pull consumer: messages are handled the moment they arrive.

nats-py's ``fetch()`` returns a batch only when it is full or its timeout
expires, which is wrong for a latency-sensitive dispatcher. This keeps pull
requests outstanding on the durable consumer (``$JS.API.CONSUMER.MSG.NEXT``)
with their replies going to one inbox subscription, and tops them up as
messages arrive, bounded by how many jobs the scheduler has room for. It is
the pattern of the newer NATS clients' ``consume()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from tether.connection import subscribe_inline
from tether.tasks import wait_done

log = logging.getLogger(__name__)


class PullConsumer:
    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        durable: str,
        handler: Callable[[Msg], None],
        room: Callable[[], int],
        batch: int = 256,
        expires_s: float = 5.0,
        api_prefix: str = "$JS.API",
    ) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._handler = handler
        self._room = room
        self._batch = batch
        self._expires_s = expires_s
        self._outstanding = 0  # messages asked for and not yet delivered or expired
        self._inbox = ""
        self._sub = None
        self._waiter: asyncio.Future[None] | None = None
        self.delivered = 0

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await subscribe_inline(self._nc, self._inbox, self._on_msg)
        listeners = getattr(self._nc, "reconnect_listeners", None)
        if listeners is not None:
            listeners.append(self._reconnected)

    def _reconnected(self) -> None:
        """The pull requests died with the old connection: ask again now, not when they would expire."""
        self._outstanding = 0
        self._signal()

    async def run(self, running: Callable[[], bool]) -> None:
        """Keep enough pulls outstanding while ``running()``; re-pull when requests expire."""
        await self.start()
        loop = asyncio.get_running_loop()
        try:
            while running():
                self._waiter = loop.create_future()  # before the pull: a wake during it is kept
                want = self._want()
                if want:
                    await self._pull(want)
                if not await wait_done(self._waiter, self._expires_s):
                    self._outstanding = 0  # every request has expired by now
        finally:
            with contextlib.suppress(AttributeError, ValueError):
                self._nc.reconnect_listeners.remove(self._reconnected)  # type: ignore[attr-defined]
            if self._sub is not None:
                with contextlib.suppress(Exception):  # a closed connection has nothing left to unsubscribe
                    await self._sub.unsubscribe()

    def poke(self) -> None:
        """Room was freed: pull again if enough room has built up (once per quarter batch, not per job)."""
        if self._want():
            self._signal()

    def _want(self) -> int:
        """How many messages to ask for now (0: not worth a request yet)."""
        want = min(self._batch, self._room()) - self._outstanding
        if want >= max(1, self._batch // 4) or (want > 0 and self._outstanding == 0):
            return want
        return 0

    def wake(self) -> None:
        """Have the loop look again now (``running()`` may have changed)."""
        self._signal()

    def _signal(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _pull(self, n: int) -> None:
        req = {"batch": n, "expires": int(self._expires_s * 0.9 * 1e9)}
        self._outstanding += n
        try:
            await self._nc.publish(self._next_subject, json.dumps(req).encode(), reply=self._inbox)
        except Exception as exc:
            self._outstanding -= n
            log.warning("pull request failed", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)

    def _on_msg(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status") if not msg.data else None
        if status:
            # 404 no messages / 408 request expired / 409 limits: the request's remainder is void.
            pending = (msg.headers or {}).get("Nats-Pending-Messages")
            self._outstanding = max(0, self._outstanding - (int(pending) if pending else 0))
            if status not in ("404", "408", "100"):
                log.info(
                    "pull status",
                    extra={"status": status, "description": (msg.headers or {}).get("Description")},
                )
            self._signal()
            return
        self._outstanding = max(0, self._outstanding - 1)
        self.delivered += 1
        self._handler(msg)
        if self._outstanding < self._batch // 2:
            self._signal()
