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


async def _never_reply(msg: Msg) -> None:
    """A subscriber that never answers (no "no responders" reply either)."""


async def _cancel_as_the_reply_lands(client: Client) -> asyncio.Task[Msg]:
    """A request whose reply and cancel arrive in the same loop turn (a KV write while its role closes)."""
    await client.subscribe("t.no-one-answers", cb=_never_reply)
    await client.flush()
    task = asyncio.create_task(client.request("t.no-one-answers", b"x", timeout=5))
    await _until(lambda: bool(client._resp_map))  # published, waiting for its reply
    fut = next(iter(client._resp_map.values()))
    fut.set_result(Msg(client, subject="_INBOX.x", data=b"reply"))
    task.cancel()
    await asyncio.wait([task])
    return task


async def test_a_cancel_landing_with_the_reply_is_not_swallowed(nc: Client, settings: Settings) -> None:
    assert (await _cancel_as_the_reply_lands(nc)).cancelled()
    # nats-py's own request loses that cancel on Python 3.11 (asyncio.wait_for): what TetherClient fixes
    plain = await nats.connect(settings.nats_url)
    try:
        lost = await _cancel_as_the_reply_lands(plain)
        assert lost.cancelled() or lost.result().data == b"reply"
    finally:
        await plain.close()


async def test_a_request_nobody_answers_still_times_out_with_nats_timeout(nc: Client) -> None:
    await nc.subscribe("t.silent", cb=_never_reply)
    await nc.flush()
    started = asyncio.get_running_loop().time()
    try:
        await nc.request("t.silent", b"x", timeout=0.3)
    except nats.errors.TimeoutError:
        pass
    else:
        raise AssertionError("no timeout")
    assert 0.25 < asyncio.get_running_loop().time() - started < 3
    assert not nc._resp_map  # the waiting future is gone with it
