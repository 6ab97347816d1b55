"""Inline handlers (``TetherClient.subscribe_inline``) against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from tether.connection import TetherClient, subscribe_inline
from tether.settings import Settings


async def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_every_message_reaches_the_handler_in_order_with_its_headers(nc: Client) -> None:
    assert isinstance(nc, TetherClient)
    got: list[tuple[bytes, str | None]] = []
    await subscribe_inline(nc, "t.inline", lambda m: got.append((m.data, (m.headers or {}).get("k"))))
    await nc.flush()
    for i in range(500):
        await nc.publish("t.inline", str(i).encode(), headers={"k": f"v{i}"} if i % 2 else None)
    await _until(lambda: len(got) == 500)
    assert got == [(str(i).encode(), f"v{i}" if i % 2 else None) for i in range(500)]


async def test_a_failing_handler_does_not_stop_the_connection(nc: Client) -> None:
    got: list[bytes] = []

    def handler(msg: Msg) -> None:
        if msg.data == b"boom":
            raise RuntimeError("handler bug")
        got.append(msg.data)

    await subscribe_inline(nc, "t.fail", handler)
    await nc.flush()
    for data in (b"a", b"boom", b"b"):
        await nc.publish("t.fail", data)
    await _until(lambda: got == [b"a", b"b"])
    assert nc.is_connected


async def test_unsubscribed_handlers_are_not_called_and_queue_groups_share(nc: Client, settings: Settings) -> None:
    a: list[bytes] = []
    b: list[bytes] = []
    sub_a = await subscribe_inline(nc, "t.q", lambda m: a.append(m.data), queue="g")
    other = await nats.connect(settings.url)  # a plain nats-py client: the callback fallback
    try:
        await subscribe_inline(other, "t.q", lambda m: b.append(m.data), queue="g")
        await other.flush()
        await nc.flush()
        for i in range(200):
            await nc.publish("t.q", str(i).encode())
        await _until(lambda: len(a) + len(b) == 200)
        assert a and b and sorted(a + b) == sorted(str(i).encode() for i in range(200))
        await sub_a.unsubscribe()
        await nc.flush()
        before = len(a)
        for _ in range(50):
            await nc.publish("t.q", b"after")
        await _until(lambda: b.count(b"after") == 50)
        assert len(a) == before
    finally:
        await other.close()
