"""Wire encoding: JSON (the default, so a bare ``nats pub`` works) or msgpack.

The ``Content-Type`` header names the encoding; a reply uses the request's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

import msgpack
import orjson

from tether.errors import InvalidRequest

JSON = "application/json"
MSGPACK = "application/msgpack"
CONTENT_TYPE = "Content-Type"
_MSGPACK_ALIASES = frozenset({MSGPACK, "application/x-msgpack", "msgpack", "application/vnd.msgpack"})
_JSON_ALIASES = frozenset({JSON, "json", "text/json", "text/plain", ""})


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


#: One decoder for every message: ``json.loads(..., strict=False)`` builds a new decoder and
#: scanner per call, which costs more than decoding a small message (8.2 µs against 3.7).
#: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259) and no field takes them: refused.
_JSON_DECODER = json.JSONDecoder(strict=False, parse_constant=_not_json)
#: A ``\u`` escape of a UTF-16 surrogate (d800-dfff): only then can decoded text hold a lone one,
#: which cannot be encoded again (as UTF-8, or into a reply). Cheap to look for; rare to find.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: Compact UTF-8 JSON; one encoder too (``json.dumps`` with options builds one per call).
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: orjson (Rust) decodes and encodes a message several times faster than the ``json`` module, and every
#: job is decoded and encoded as JSON several times (request, result, reply, placement); the ``json``
#: module above stays the reference for what orjson does not take the same way. orjson reads an integer
#: past 64 bits as a float: a run of 19 digits (from -2**63 - 1 down, 19 digits are past them too) sends
#: the text to ``json``, which keeps it exact (found by mapping every digit to ``0`` and looking for
#: nineteen of them: a quarter of a regex search's cost). orjson also takes nesting ``json`` refuses (it
#: allows 1,024 levels, ``json`` about 990): text that could nest that deep goes to ``json`` as well.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19
_MAX_OPENINGS = 900


def content_type_of(headers: Mapping[str, str] | None) -> str:
    """The canonical encoding named by a message's headers (JSON when absent)."""
    if not headers:
        return JSON
    raw = headers.get(CONTENT_TYPE) or headers.get("content-type")
    if raw is None:  # header names are case-insensitive: CONTENT-TYPE, Content-type, ...
        raw = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    value = raw.split(";", 1)[0].strip().lower()
    if value in _MSGPACK_ALIASES:
        return MSGPACK
    if value in _JSON_ALIASES:
        return JSON
    raise InvalidRequest(f"unsupported Content-Type {raw!r}: use {JSON} or {MSGPACK}", field="Content-Type")


def decode(data: bytes, content_type: str = JSON) -> Any:
    """Decode a payload; malformed bytes raise ``InvalidRequest`` naming the encoding."""
    if content_type == MSGPACK:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise InvalidRequest(f"malformed msgpack: {str(exc) or type(exc).__name__}", field="body") from None
    if (
        isinstance(data, (bytes, bytearray))
        and _LONG_DIGIT_RUN not in data.translate(_DIGITS_AS_ZERO)
        and (len(data) < 2 * _MAX_OPENINGS or data.count(b"[") + data.count(b"{") < _MAX_OPENINGS)
    ):
        try:  # what orjson accepts, json reads the same way (values, duplicate keys, escapes)
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # raw control characters, NaN, 1e400, deep nesting, bad UTF-8: json decides, as before
    # JSON between systems is UTF-8 (RFC 8259): decoding it directly skips json's encoding sniffing.
    # Control characters inside strings are accepted (the seed's own ``curl`` example sends a raw
    # newline inside its ``input``), on every entrypoint alike.
    try:
        obj = _JSON_DECODER.decode(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
    except (ValueError, RecursionError) as exc:  # bad syntax or UTF-8, an integer over 4,300 digits, deep nesting
        raise InvalidRequest(f"malformed JSON: {_json_failure(exc)}", field="body") from None
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _SURROGATE_ESCAPE.search(raw):  # a pair is fine; a lone surrogate is not text
        try:
            _JSON_ENCODER.encode(obj).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                "malformed JSON: a \\u escape names a lone UTF-16 surrogate, which is not text", field="body"
            ) from None
    return obj


def encode(obj: Any, content_type: str = JSON) -> bytes:
    if content_type == MSGPACK:
        return msgpack.packb(obj, use_bin_type=True)
    try:  # NaN and infinities become null (JSON has neither)
        return orjson.dumps(obj)
    except TypeError:  # an integer past 64 bits, a non-string key, a lone surrogate: json, as before
        return _JSON_ENCODER.encode(obj).encode()


def compact_json(obj: Any) -> str:
    """``obj`` as compact JSON text (for JSON stored in a column)."""
    return encode(obj).decode()


def _json_failure(exc: Exception) -> str:
    """A JSON decoding failure in a few words (RecursionError's own message blames Python, not the input)."""
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
