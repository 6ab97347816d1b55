"""The scheduler's continuous pull consumer against a real nats-server, across a server restart."""

from __future__ import annotations

import asyncio
import time

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.scheduler.pull import PullConsumer
from tether.connection import connect
from tether.natsserver import NatsServer


async def test_pulls_again_right_after_a_reconnect_not_when_the_old_requests_expire(
    nats_server: NatsServer,
) -> None:
    nc = await connect(nats_server.url, name="pull-test")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
    await js.add_consumer("T", ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
    got: list[tuple[float, bytes]] = []
    acks: set[asyncio.Future[None]] = set()

    def handle(msg: Msg) -> None:
        got.append((time.monotonic(), msg.data))
        ack = asyncio.ensure_future(msg.ack())
        acks.add(ack)
        ack.add_done_callback(acks.discard)

    # Requests that live 30 s: without a re-pull on reconnect, the first message after a
    # restart would wait for them to expire.
    puller = PullConsumer(nc, stream="T", durable="d", handler=handle, room=lambda: 10, batch=10, expires_s=30.0)
    running = True
    task = asyncio.ensure_future(puller.run(lambda: running))
    try:
        await js.publish("t.a", b"before")
        deadline = time.monotonic() + 10
        while not got:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        nats_server.kill()
        await asyncio.to_thread(nats_server.start)  # same port, same store: the stream and consumer survive
        while not nc.is_connected:
            await asyncio.sleep(0.05)
        sent = time.monotonic()
        for _ in range(50):
            try:
                await js.publish("t.a", b"after", timeout=1.0)
                break
            except Exception:
                await asyncio.sleep(0.2)
        # "before" may come again first: a kill -9 can lose its ack, or the consumer state the server had
        # not yet written to its store. What matters is that "after" does not wait for the old requests.
        while b"after" not in [data for _, data in got[1:]]:
            assert time.monotonic() - sent < 10.0, "not delivered: the dead pull requests were waited out"
            await asyncio.sleep(0.05)
        assert {data for _, data in got} == {b"before", b"after"}
    finally:
        running = False
        puller.wake()
        await asyncio.wait_for(task, 10)
        await nc.close()
