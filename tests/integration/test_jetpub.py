"""``JetPublisher``: the hot-path JetStream publish, against a real server's stream."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from tether.jetpub import JetPublisher


async def test_acks_carry_sequence_and_duplicates(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"], duplicate_window=60))
    pub = JetPublisher.of(js)
    assert JetPublisher.of(nc) is pub  # one per connection

    acks = await asyncio.gather(
        *(pub.publish(f"t.{i}", b"x", stream="T", headers={"Nats-Msg-Id": f"m{i}"}) for i in range(200))
    )
    assert sorted(a.seq for a in acks) == list(range(1, 201))
    assert not any(a.duplicate for a in acks) and {a.stream for a in acks} == {"T"}

    again = await pub.publish("t.7", b"x", stream="T", headers={"Nats-Msg-Id": "m7"})
    assert again.duplicate and again.seq == acks[7].seq  # the stored message's sequence
    assert (await js.stream_info("T")).state.messages == 200
    msg = await js.get_msg("T", again.seq)
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == "m7"


async def test_wrong_stream_is_an_api_error_and_no_stream_is_no_response(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
    pub = JetPublisher.of(nc)
    with pytest.raises(nats.js.errors.APIError) as err:
        await pub.publish("t.1", b"x", stream="OTHER")
    assert err.value.err_code == 10060  # expected stream does not match
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await pub.publish("nobody.listens", b"x", stream="T", timeout=5)
    assert (await js.stream_info("T")).state.messages == 0


async def test_silence_times_out_and_leaves_nothing_waiting(nc: Client) -> None:
    sub = await nc.subscribe("quiet.>")  # a responder that never answers: no 503, no ack
    pub = JetPublisher.of(nc)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(nats.errors.TimeoutError):
        await pub.publish("quiet.1", b"x", stream="T", timeout=0.3)
    assert 0.25 < loop.time() - t0 < 2.0
    assert pub.waiting == 0
    await sub.unsubscribe()
