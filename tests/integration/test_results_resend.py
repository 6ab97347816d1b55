"""``publish_final`` through a stall: a resent result reaches core subscribers once, not twice."""

from __future__ import annotations

import asyncio
import os
import signal

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import ResultMessage, ResultStatus
from streams import apply, topology
from tether import subjects
from tether.natsserver import NatsServer
from tether.results import fetch_final, publish_final
from tether.settings import Settings


async def test_a_try_whose_ack_was_lost_is_not_sent_again(nc: Client, nats_server: NatsServer) -> None:
    js = nc.jetstream()
    await apply(js, topology(Settings(), nc._server_info))
    got: list[bytes] = []

    async def on_result(msg: Msg) -> None:
        got.append(msg.data)

    sub = await nc.subscribe(subjects.result_subject("j-stall"), cb=on_result)
    await nc.flush()
    result = ResultMessage(
        job_id="j-stall", status=ResultStatus.COMPLETED, tenant_id="demo", model_id="echo", version="1",
        result="once", started_at=0.0, finished_at=0.0,
    )
    assert nats_server.proc is not None
    os.kill(nats_server.proc.pid, signal.SIGSTOP)  # the first try is sent, then its ack times out (5 s)

    async def resume() -> None:
        await asyncio.sleep(6.0)
        os.kill(nats_server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]  # it stores and delivers the first try

    waker = asyncio.create_task(resume())
    try:
        await publish_final(js, result, {}, budget_s=30.0)  # True (its late ack) or False (found stored)
    finally:
        await waker
    assert (await fetch_final(js, "j-stall")) == result
    await nc.flush()
    await asyncio.sleep(0.3)  # a resend would be delivered by now
    await sub.unsubscribe()
    assert len(got) == 1, f"core subscribers got the result {len(got)} times"
