"""``publish_final``'s look at earlier tries' late acknowledgements (pure logic on real futures)."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tether.errors import PayloadTooLarge
from tether.jetpub import Ack, AckTimeout, JetPublisher
from tether.results import _late_ack


def _timed_out(pub: JetPublisher, token: str, reply: Msg | None) -> AckTimeout:
    late: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
    pub._waiting[token] = late
    if reply is not None:
        late.set_result(reply)
    return AckTimeout(pub, token, late)


def _msg(nc: Client, data: bytes, headers: dict[str, str] | None = None) -> Msg:
    return Msg(nc, subject="_INBOX.x.1", data=data, headers=headers)


async def test_a_late_ack_is_the_answer_and_a_late_error_is_dropped_not_raised() -> None:
    nc = Client()
    pub = JetPublisher(nc)
    error = _timed_out(pub, "1", _msg(nc, b"", {"Status": "503"}))  # no stream answered that try
    acked = _timed_out(pub, "2", _msg(nc, b'{"stream":"RESULTS","seq":7}'))
    unanswered = [error, acked]
    assert await _late_ack(unanswered, 0.1, 10) == Ack(stream="RESULTS", seq=7, duplicate=False)
    assert unanswered == [acked] and "1" not in pub._waiting  # the failed try is forgotten


async def test_only_errors_and_silence_mean_send_again() -> None:
    nc = Client()
    pub = JetPublisher(nc)
    unanswered = [_timed_out(pub, "1", _msg(nc, b"", {"Status": "503"})), _timed_out(pub, "2", None)]
    assert await _late_ack(unanswered, 0.05, 10) is None  # the caller sends again
    assert [t._token for t in unanswered] == ["2"]  # still waiting for the silent one


async def test_a_late_too_large_error_fails_at_once() -> None:
    nc = Client()
    pub = JetPublisher(nc)
    too_large = b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}'
    with pytest.raises(PayloadTooLarge):
        await _late_ack([_timed_out(pub, "1", _msg(nc, too_large))], 0.1, 10**9)
