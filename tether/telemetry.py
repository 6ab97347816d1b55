"""Correlation and trace context carried in NATS headers, plus JSON-line logging.

Every message carries ``correlation-id`` and a W3C ``traceparent``. Each hop keeps
the trace id and mints its own span id (``child_headers``). When an
OpenTelemetry SDK is configured, ``span()`` records real spans under the same
trace; without one the API is a no-op and only the headers travel.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

CORRELATION_ID = "correlation-id"
#: A client's correlation id is kept up to this many characters (it is copied into every hop and the store).
MAX_CORRELATION_ID = 128
TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("tether")


# Trace, span and correlation ids need to be unique, not secret: a PRNG seeded from the OS
# (re-seeded after fork) avoids a getrandom() syscall per id on the hot path.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def random_hex(nbytes: int) -> str:
    return f"{_ids.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def new_traceparent(trace_id: str | None = None) -> str:
    span_id = random_hex(8)
    while span_id == "0" * 16:  # all-zero ids are invalid in W3C trace context
        span_id = random_hex(8)
    return f"00-{trace_id or random_hex(16)}-{span_id}-01"


def trace_id_of(traceparent: str | None) -> str | None:
    if traceparent:
        m = _TRACEPARENT_RE.match(traceparent.strip())
        if m and m.group(1) != "0" * 32:
            return m.group(1)
    return None


def child_headers(parent: Mapping[str, str] | None, correlation_id: str | None = None) -> dict[str, str]:
    """Headers for the next hop: same correlation id and trace id, a fresh span id."""
    parent = parent or {}
    cid = correlation_id or parent.get(CORRELATION_ID) or random_hex(12)
    return {CORRELATION_ID: cid, TRACEPARENT: new_traceparent(trace_id_of(parent.get(TRACEPARENT)))}


_TRACING_RECHECK_S = 1.0
_tracing = {"on": False, "checked_at": float("-inf")}


def tracing_enabled() -> bool:
    """True once an OpenTelemetry SDK tracer provider is installed (the API alone records nothing).

    Looking the provider up reads the environment each time, and every job asks several times:
    a provider installed later is noticed within ``_TRACING_RECHECK_S``.
    """
    if _tracing["on"]:
        return True
    now = time.monotonic()
    if now - _tracing["checked_at"] < _TRACING_RECHECK_S:
        return False
    _tracing["checked_at"] = now
    provider = trace.get_tracer_provider()
    _tracing["on"] = not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return bool(_tracing["on"])


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(
    name: str, headers: Mapping[str, str] | None = None, **attributes: str
) -> AbstractContextManager[None]:
    """A span under the trace in ``headers``; free when no SDK is configured (the hot path)."""
    if not tracing_enabled():
        return _NO_SPAN
    return _sdk_span(name, headers, attributes)


@contextmanager
def _sdk_span(name: str, headers: Mapping[str, str] | None, attributes: dict[str, str]) -> Iterator[None]:
    ctx = _propagator.extract(carrier=dict(headers or {}))
    with _tracer.start_as_current_span(name, context=ctx, attributes=attributes):
        yield


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra`` fields."""

    _SKIP = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._SKIP:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("TETHER_LOG_LEVEL", "INFO")).upper())
    logging.getLogger("nats").setLevel(logging.WARNING)


def now() -> float:
    return time.time()
