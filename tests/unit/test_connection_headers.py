"""TetherClient's header parser gives exactly what nats-py's own parser gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from tether.connection import TetherClient

CASES = [
    b"",
    b"\r\n",
    b"correlation-id: abc\r\ntraceparent: 00-1-2-01\r\n\r\n",
    b"Name:Value\r\n",
    b"Name:\tValue  \r\n",
    b"  Padded  :  spaced value  \r\n",
    b"no colon here\r\nk: v\r\n",
    b"bad name: x\r\nbad\tname: y\r\nbad\x1cname: z\r\nok: 1\r\n",
    b"caf\xc3\xa9: not ascii\r\nk: caf\xc3\xa9\r\n",
    b"k: \xff\xfe broken utf-8\r\n",
    b"k: a:b:c\r\n",
    b": empty name\r\n",
    b"dup: 1\r\ndup: 2\r\n",
    b"Nats-Msg-Id: j-1\r\nContent-Type: application/msgpack\r\n\r\n",
]


@pytest.mark.parametrize("raw", CASES)
def test_same_as_nats_py(raw: bytes) -> None:
    assert TetherClient._parse_header_lines(raw) == Client._parse_header_lines(raw)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=6))
def test_same_as_nats_py_on_random_blocks(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines) + b"\r\n"
    assert TetherClient._parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_rejects_whitespace_in_names_that_nats_py_rejects() -> None:
    parsed = TetherClient._parse_header_lines(b"a b: 1\r\na\x0bb: 2\r\na\x1fb: 3\r\nab: 4\r\n")
    assert parsed == {"ab": "4"}


# ---- the header block a publish writes ---------------------------------------------------------


async def _written(client_cls: type[Client], headers: dict[str, str]) -> bytes | Exception:
    """The protocol bytes ``Client._send_publish`` of ``client_cls`` queues for one publish."""
    nc = TetherClient()
    sent: list[bytes] = []

    async def record(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    nc._send_command = record  # type: ignore[method-assign]
    nc._flush_queue = None
    try:
        await client_cls._send_publish(nc, "tether.jobs.a.b.c", "_INBOX.x", b"payload", 7, headers)
    except Exception as exc:  # the same error type is what must match
        return exc
    return sent[0]


HEADER_CASES = [
    {"correlation-id": "j-1", "traceparent": "00-abc-def-01", "Content-Type": "application/msgpack"},
    {"  Padded  ": "  spaced  ", "Nats-Msg-Id": "j-2"},
    {"k": "line\r\nbreak\nand\rmore"},
    {"": "empty name skipped", "  ": "blank too", "k": "v"},
    {"k": ""},
    {"caf\u00e9": "x"},
    {"bad name": "x"},
    {"k": "caf\u00e9 \u2603"},
]


@pytest.mark.parametrize("headers", HEADER_CASES)
async def test_header_block_is_what_nats_py_writes(headers: dict[str, str]) -> None:
    ours = await _same_as_nats_py(headers)
    again = await _written(TetherClient, headers)  # the second time, from the name cache
    assert type(again) is type(ours) if isinstance(ours, Exception) else again == ours


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=5))
async def test_header_block_matches_nats_py_on_random_headers(headers: dict[str, str]) -> None:
    await _same_as_nats_py(headers)


async def _same_as_nats_py(headers: dict[str, str]) -> bytes | Exception:
    """What TetherClient writes for ``headers``: the bytes nats-py writes, or the same error type."""
    ours, theirs = await _written(TetherClient, headers), await _written(Client, headers)
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs)
    else:
        assert ours == theirs
    return ours
