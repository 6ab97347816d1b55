"""``FastParser`` against nats-py's own ``Parser``: same calls, same errors, same leftover.

Every case feeds one byte stream to both parsers in the same chunks and compares, after
each ``parse()`` call, the callbacks made (with argument types), the exception raised
(type and text) and the state left behind (``buf``, ``state``, ``needed``,
``header_needed``; ``msg_arg`` while a payload is awaited).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_MSG_PAYLOAD, Parser

from tether.wire_parser import FastParser

Call = tuple[Any, ...]


class RecordingNC:
    """The parser's view of a client: records each callback; can raise or reset on cue."""

    def __init__(self, pong_raises: bool = False) -> None:
        self.calls: list[Call] = []
        self.pong_raises = pong_raises
        self.pongs = 0
        self.raised: set[str] = set()
        self.parser: Parser | None = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, payload: bytes, hdr: bytes | None
    ) -> None:
        self.calls.append(
            ("msg", sid, subject, reply, payload, hdr, type(subject), type(reply), type(payload))
        )
        if payload.startswith(b"BOOM"):
            raise RuntimeError("handler failed")
        if payload.startswith(b"RESET") and self.parser is not None:
            self.parser.reset()

    async def _process_err(self, emsg: str) -> None:
        self.calls.append(("err", emsg))
        if "boom" in emsg and emsg not in self.raised:  # -ERR stays unconsumed: raise once
            self.raised.add(emsg)
            raise RuntimeError("err handler failed")
        if "stale connection" in emsg and self.parser is not None:
            self.parser.reset()  # nats-py's client does this via _process_op_err

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))
        self.pongs += 1
        if self.pong_raises and self.pongs % 3 == 0:
            raise RuntimeError("pong handler failed")

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))


def _state(p: Parser) -> tuple[Any, ...]:
    msg_arg = dict(p.msg_arg) if p.state == AWAITING_MSG_PAYLOAD else None
    return bytes(p.buf), p.state, p.needed, p.header_needed, msg_arg


async def _run(parser_cls: type[Parser], chunks: list[bytes], pong_raises: bool = False) -> list[Any]:
    nc = RecordingNC(pong_raises)
    p = parser_cls(nc)
    nc.parser = p
    log: list[Any] = []
    for chunk in chunks:
        try:
            await p.parse(chunk)
            outcome: Any = None
        except Exception as e:
            outcome = (type(e), e.args, str(e))  # ProtocolError's str() is always the same
        log.append((outcome, nc.calls[:], _state(p)))
        nc.calls.clear()
    return log


async def _assert_same(chunks: list[bytes], pong_raises: bool = False) -> list[Any]:
    want = await _run(Parser, chunks, pong_raises)
    got = await _run(FastParser, chunks, pong_raises)
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g == w, f"after chunk {i} ({chunks[i][:60]!r})"
    return want


def _chunkings(data: bytes, rng: random.Random) -> list[list[bytes]]:
    """Whole, byte by byte (short streams), and random cuts of several sizes."""
    out = [[data]]
    if len(data) <= 3000:
        out.append([data[i : i + 1] for i in range(len(data))])
    for top in (8, 64, 700, 5000):
        cuts: list[bytes] = []
        i = 0
        while i < len(data):
            n = rng.randint(1, top)
            cuts.append(data[i : i + n])
            i += n
        out.append(cuts)
    return out


def _sep(rng: random.Random, odd: bool) -> bytes:
    if odd and rng.random() < 0.3:
        return rng.choice([b"\t", b" \t ", b"\x0b", b"\x0c", b"\r", b"\n", b" \r\n ", b"\r\n"])
    return rng.choice([b" ", b" ", b" ", b"  ", b"\t", b" \t"])


def _hsep(rng: random.Random, odd: bool) -> bytes:
    """Between reply and size: the regexes take no CR or LF there."""
    if odd and rng.random() < 0.2:
        return rng.choice([b"\r", b" \n", b"\r\n", b"\x0b"])
    return rng.choice([b" ", b" ", b"  ", b"\t", b"\x0c"])


def _payload(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return b""
    if kind == 1:
        return b"a\r\nMSG foo 1 3\r\nb\r\n"
    if kind == 2:
        return b"HMSG x 1 2 3\r\n12\r\n"
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    return b'{"prompt": "hi", "max_tokens": %d}' % rng.randrange(1000)


def _headers(rng: random.Random, odd: bool) -> bytes:
    kind = rng.randrange(5) if odd else 4
    if kind == 0:
        return b"12\r\n"  # starts with digits then CRLF: HMSG_RE looks across the line
    if kind == 1:
        return b" 7\r\n\r\n"
    return b"NATS/1.0\r\nNats-Msg-Id: %d\r\nTether-Trace: abc\r\n\r\n" % rng.randrange(10**6)


def _item(rng: random.Random, odd: bool) -> bytes:
    r = rng.random()
    s = lambda: _sep(rng, odd)  # noqa: E731
    if r < 0.35:
        payload = _payload(rng)
        reply = rng.choice([None, b"_INBOX.abc.1", b"$JS.ACK.stream.consumer.1.2.3.1700000000.0", b"123"])
        sid = rng.choice([b"1", b"42", b"007"])
        if reply is None:
            head = b"MSG" + s() + b"orders.new" + s() + sid + s()
        else:
            head = b"MSG" + s() + b"orders.new" + s() + sid + s() + reply + _hsep(rng, odd)
        return head + b"%d\r\n" % len(payload) + payload + b"\r\n"
    if r < 0.7:
        hdr = _headers(rng, odd)
        payload = _payload(rng)
        reply = rng.choice([None, b"$JS.ACK.S.C.1.5.9.1700000000123456789.3", b"55"])
        sizes = b"%d" % len(hdr) + s() + b"%d" % (len(hdr) + len(payload))
        if reply is None:
            head = b"HMSG" + s() + b"jobs.x" + s() + b"9" + s() + sizes
        else:
            head = b"HMSG" + s() + b"jobs.x" + s() + b"9" + s() + reply + _hsep(rng, odd) + sizes
        return head + b"\r\n" + hdr + payload + b"\r\n"
    return rng.choice(
        [
            b"+OK\r\n",
            b"PING\r\n",
            b"PONG\r\n",
            b"PING \r\n",
            b"INFO " + json.dumps({"server_id": "abc", "max_payload": 1048576}).encode() + b"\r\n",
            b"INFO\t{}\r\n",
            b"-ERR 'Some Error'\r\n",
            b"-ERR 'Permissions Violation for Subscription to \"x\"'\r\n",
        ]
    )


def _stream(rng: random.Random, n: int, odd: bool) -> bytes:
    return b"".join(_item(rng, odd) for _ in range(n))


async def test_usual_streams_any_chunking() -> None:
    rng = random.Random(20240601)
    for _ in range(6):
        data = _stream(rng, 40, odd=False)
        for chunks in _chunkings(data, rng):
            log = await _assert_same([*chunks, b"PING\r\n"])
            assert all(outcome is None for outcome, _, _ in log)  # every byte parsed cleanly
            assert log[-1][2][0] == b""
            assert log[-1][1] == [("ping",)]


async def test_odd_whitespace_streams_any_chunking() -> None:
    rng = random.Random(7)
    for _ in range(40):
        data = _stream(rng, 8, odd=True)
        for chunks in _chunkings(data, rng):
            await _assert_same([*chunks, b"PING\r\n"])


async def test_usual_stream_reaches_the_handler() -> None:
    """A sanity check on the oracle itself."""
    log = await _assert_same([b"HMSG a.b 3 $JS.ACK.x 12 15\r\nNATS/1.0\r\n\r\nabc\r\nMSG a 4 0\r\n\r\n"])
    calls = log[0][1]
    assert calls == [
        ("msg", 3, b"a.b", b"$JS.ACK.x", b"abc", b"NATS/1.0\r\n\r\n", bytes, bytes, bytes),
        ("msg", 4, b"a", b"", b"", None, bytes, bytes, bytes),
    ]


async def test_random_fragments() -> None:
    """Junk made of protocol pieces: errors, waits and odd matches must agree too."""
    rng = random.Random(99)
    pieces = [b"MSG", b"HMSG", b" ", b"\t", b"\r\n", b"\r", b"\n", b"1", b"23", b"x", b"a.b",
              b"+OK", b"PING", b"PONG", b"-ERR", b"'e'", b"INFO", b"{}", b"0", b"-1", b"+2", b"1_0"]  # fmt: skip
    for _ in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30)))
        for chunks in _chunkings(data, rng)[:3]:
            await _assert_same([*chunks, b"\r\n", b"PING\r\n"])


@pytest.mark.parametrize(
    "data",
    [
        b"FOO bar\r\n",
        b"MSGfoo 1 2\r\n",
        b"msg foo 1 2\r\nab\r\n",  # the regexes are case-sensitive
        b" MSG foo 1 2\r\nab\r\n",
        b"MSG foo 1 2 \r\nab\r\n",
        b"PING\r\n\r\nX\r\n",
        b"HMSG foo 1 2\r\nab\r\n",
        b"MSG foo 1 r\r5\r\nhello\r\n",  # no CR between reply and size
        b"HMSG foo 1 r\r2 5\r\nhello\r\n",
        b"MSG foo 1 +5\r\nhello\r\n",  # sizes are \\d+, not what int() takes
        b"MSG foo 1 5_0\r\nhello\r\n",
        b"HMSG foo 1 +2 5\r\nhello\r\n",
        b"HMSG foo 1 2 \xd9\xa5\r\nhello\r\n",
    ],
)
async def test_unknown_protocol(data: bytes) -> None:
    for chunks in ([data], [data[:5], data[5:]], [data[i : i + 1] for i in range(len(data))]):
        await _assert_same(chunks)
    with pytest.raises(ProtocolError) as raised:
        await FastParser(RecordingNC()).parse(data)
    assert raised.value.args == ("nats: unknown protocol",)


@pytest.mark.parametrize(
    "data",
    [
        b"PING\r\n\r\n\r\nPONG\r\n",  # PING_RE's \\s* takes the empty lines: no error
        b"-ERR \r\n",  # nats-py raises AttributeError (no quoted text)
        b"MSG\r\nfoo\r\n1\r\n2\r\nab\r\n",  # \\s+ spans lines: a message
        b"INFO {bad json\r\n",
        b"HMSG foo 1 2\r\n5\r\nhello\r\n",  # header 2, size 5 read across two lines
        b"MSG foo 1\r5\r\nhello\r\n",  # CR is whitespace between the other tokens
        b"MSG foo\x0b1\x0c\x0c5\r\nhello\r\n",
        b"HMSG foo 1 r 2\r5\r\nhello\r\n",
    ],
)
async def test_odd_lines_as_nats_py(data: bytes) -> None:
    for chunks in ([data], [data[:5], data[5:]], [data[i : i + 1] for i in range(len(data))]):
        await _assert_same([*chunks, b"PING\r\n"])


@pytest.mark.parametrize(
    "line",
    [
        b"MSG foo bar 5\r\n",
        b"MSG foo 1.5 5\r\n",
        b"HMSG foo x 2 5\r\n",
        b"HMSG foo x reply 2 5\r\n",
        b"MSG foo 1_0 reply 5\r\n",  # int() accepts this: both parse it
        b"MSG foo +3 5\r\n",
        b"MSG foo 1 " + b"9" * 5000 + b"\r\n",  # beyond int()'s digit limit
    ],
)
async def test_malformed_msg(line: bytes) -> None:
    data = line + b"hello\r\nPING\r\n"
    for chunks in ([data], [data, b"PONG\r\n"], [data[i : i + 1] for i in range(len(data))][:200]):
        await _assert_same(chunks)


async def test_malformed_msg_raises_protocol_error() -> None:
    p = FastParser(RecordingNC())
    for data in (b"MSG foo bar 5\r\nhello\r\n", b""):  # nothing consumed: the same again
        with pytest.raises(ProtocolError) as raised:
            await p.parse(data)
        assert raised.value.args == ("nats: malformed MSG",)


async def test_hmsg_without_reply_looks_at_the_next_line() -> None:
    """HMSG_RE reads "HMSG s 1 10 20\\r\\n5\\r\\n" as reply 10, header 20, size 5."""
    data = b"HMSG s 1 10 20\r\n5\r\nhello\r\n"
    for cut in range(1, len(data)):
        await _assert_same([data[:cut], data[cut:], b"x" * 40 + b"\r\n"])


async def test_callbacks_that_raise_or_reset() -> None:
    data = (
        b"MSG a 1 4\r\nBOOM\r\nMSG a 1 2\r\nok\r\nPONG\r\nPONG\r\nPONG\r\nPING\r\n"
        b"-ERR 'boom'\r\nMSG a 2 5\r\nRESET\r\nMSG a 3 2\r\nno\r\n"
        b"-ERR 'Stale Connection'\r\nMSG a 4 2\r\nno\r\n"
    )
    rng = random.Random(5)
    for chunks in _chunkings(data, rng):
        # each raise ends a parse() call: empty feeds carry on with what was left
        log = await _assert_same([*chunks, *[b""] * 6, b"MSG b 1 2\r\nhi\r\n"], pong_raises=True)
        if len(chunks) == 1:  # in one piece: the resets drop the b"no" messages
            payloads = [c[4] for _, cs, _ in log for c in cs if c[0] == "msg"]
            assert payloads == [b"BOOM", b"ok", b"RESET", b"hi"]


async def test_reset_between_calls_and_bytearray_input() -> None:
    p = FastParser(RecordingNC())
    await p.parse(b"MSG a 1 10\r\nhal")
    assert p.state == AWAITING_MSG_PAYLOAD and bytes(p.buf) == b"hal"
    p.reset()
    await p.parse(bytearray(b"MSG a 1 2\r\nhi\r\n"))
    nc = p.nc
    assert isinstance(nc, RecordingNC)
    assert nc.calls == [("msg", 1, b"a", b"", b"hi", None, bytes, bytes, bytes)]
    assert bytes(p.buf) == b"" and p.state != AWAITING_MSG_PAYLOAD
