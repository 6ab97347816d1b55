"""JSON through orjson takes and gives exactly what the ``json`` module did, on every input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import codec
from tether.errors import InvalidRequest

_REFERENCE = json.JSONDecoder(strict=False)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_a_value_round_trips_exactly(value: object) -> None:
    data = codec.encode(value)
    assert codec.decode(data) == _REFERENCE.decode(data.decode()) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_any_bytes_decode_as_the_json_module_reads_them(data: bytes) -> None:
    try:
        expected = _REFERENCE.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):
        with pytest.raises(InvalidRequest):
            codec.decode(data)
        return
    if "NaN" in data.decode() or "Infinity" in data.decode():
        return  # codec refuses the NaN / Infinity names the json module takes (checked below)
    try:
        got = codec.decode(data)
    except InvalidRequest:  # only a lone surrogate may be refused where json took it
        assert "\\u" in data.decode().lower()
        return
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789012345678901234567890", 123456789012345678901234567890),  # exact, not a float
        (b'{"n": -98765432109876543210}', {"n": -98765432109876543210}),
        (b'{"input": "a\nb"}', {"input": "a\nb"}),  # a raw newline inside a string, as the seed's curl sends
        (b"1e400", float("inf")),
        (b"-9223372036854775809", -9223372036854775809),  # 19 digits, past 64 bits: exact too
        (b"-9999999999999999999", -9999999999999999999),
        (b'"\\ud83d\\ude00"', "\U0001f600"),
    ],
)
def test_inputs_orjson_reads_otherwise_decode_as_before(data: bytes, expected: object) -> None:
    got = codec.decode(data)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "data", [b"NaN", b'{"x": Infinity}', b'"\\ud800"', b"\xff", b"[" * 5000 + b"]" * 5000, b"[" * 1010 + b"]" * 1010]
)
def test_what_is_not_json_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="malformed JSON"):
        codec.decode(data)


def test_values_orjson_cannot_write_are_written_by_the_json_module() -> None:
    assert codec.decode(codec.encode({"big": 2**70, 1: "int key"})) == {"big": 2**70, "1": "int key"}
    assert codec.compact_json({"big": 2**70}) == '{"big":1180591620717411303424}'
    assert codec.encode({"x": float("nan")}) == b'{"x":null}'  # JSON has no NaN


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(10**19) + 1, max_value=-(2**63) - 1) | st.integers(min_value=2**63, max_value=10**19))
def test_integers_just_past_64_bits_stay_exact(value: int) -> None:
    assert codec.decode(codec.encode({"v": value})) == {"v": value}
