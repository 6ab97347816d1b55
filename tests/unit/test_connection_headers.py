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
