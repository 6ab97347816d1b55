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
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

CORRELATION_ID = "correlation-id"
TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("tether")


def new_traceparent(trace_id: str | None = None) -> str:
    return f"00-{trace_id or os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def trace_id_of(traceparent: str | None) -> str | None:
    if traceparent:
        m = _TRACEPARENT_RE.match(traceparent.strip())
        if m and m.group(1) != "0" * 32:
            return m.group(1)
    return None


def child_headers(parent: Mapping[str, str] | None, correlation_id: str | None = None) -> dict[str, str]:
    """Headers for the next hop: same correlation id and trace id, a fresh span id."""
    parent = parent or {}
    cid = correlation_id or parent.get(CORRELATION_ID) or os.urandom(12).hex()
    return {CORRELATION_ID: cid, TRACEPARENT: new_traceparent(trace_id_of(parent.get(TRACEPARENT)))}


@contextmanager
def span(name: str, headers: Mapping[str, str] | None = None, **attributes: str) -> Iterator[None]:
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
