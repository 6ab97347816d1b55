"""The PubAck reader's regex fast path reads exactly what the JSON path reads."""

from __future__ import annotations

import json
from dataclasses import dataclass

import nats.js.errors
import pytest

from tether.jetpub import _PLAIN_ACK, Ack, _read_ack


@dataclass
class _Msg:
    data: bytes
    headers: dict[str, str] | None = None


def _by_json(data: bytes) -> Ack:
    resp = json.loads(data)
    return Ack(stream=resp.get("stream", ""), seq=int(resp.get("seq", 0)), duplicate=bool(resp.get("duplicate")))


@pytest.mark.parametrize(
    ("data", "fast"),
    [
        (b'{"stream":"JOBS","seq":42}', True),
        (b'{"stream":"RESULTS","seq":9007199254740993,"duplicate": true}', True),  # as nats-server writes it
        (b'{"stream":"RESULTS","seq":3,"duplicate":true}', True),
        (b'{"stream":"JOBS","seq":7,"domain":"hub"}', True),
        (b'{"stream":"JOBS","seq":7,"domain":"hub","duplicate": true}', True),
        (b'{"stream":"JOBS","domain":"hub","seq":7}', False),
        (b'{"stream":"JOBS","seq":42,"duplicate":false}', False),
        (b'{"stream": "JOBS", "seq": 42}', False),
        (b'{"seq":42,"stream":"JOBS"}', False),
        (b'{"stream":"JOBS","seq":42,"val":"x"}', False),
    ],
)
def test_fast_and_json_paths_agree(data: bytes, fast: bool) -> None:
    assert bool(_PLAIN_ACK.match(data)) is fast
    assert _read_ack(_Msg(data)) == _by_json(data)


def test_an_error_ack_raises() -> None:
    body = b'{"error":{"code":503,"err_code":10077,"description":"no responders"}}'
    with pytest.raises(nats.js.errors.APIError):
        _read_ack(_Msg(body))
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        _read_ack(_Msg(b"", {"Status": "503"}))
