"""A drain order's grace (how long a draining worker lets its jobs finish before handing them back),
the answer to the order, and the event a worker publishes when it has drained or stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from nats.aio.client import Client
from nats.aio.msg import Msg

from tether import codec, subjects, telemetry

log = logging.getLogger(__name__)

DEFAULT_DRAIN_GRACE_S = 30.0


def drain_grace(grace_s: float) -> float:
    """At least 0, and the default for anything not a finite number (``nan`` would break the wait)."""
    return max(0.0, grace_s) if math.isfinite(grace_s) else DEFAULT_DRAIN_GRACE_S


def grace_of(msg: Msg) -> float:
    """The grace a ``tether.control.drain.<worker>`` message asks for (``{"graceS": …}``), made sane."""
    grace = DEFAULT_DRAIN_GRACE_S
    with contextlib.suppress(Exception):
        body = codec.decode(msg.data, codec.content_type_of(msg.headers)) if msg.data else {}
        grace = float(body.get("graceS", grace))
    return drain_grace(grace)


def log_failure(task: asyncio.Task[None]) -> None:
    """Done-callback of the drain task: a drain that failed is logged, never lost silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("drain failed", exc_info=task.exception())


async def answer_drain(nc: Client, msg: Msg, worker_id: str, inflight: int) -> None:
    """Reply to a drain order sent as a request: ``{workerId, draining, inflight}`` (best effort)."""
    if not msg.reply:
        return
    with contextlib.suppress(Exception):
        await nc.publish(
            msg.reply,
            codec.encode({"workerId": worker_id, "draining": True, "inflight": inflight}),
            headers={codec.CONTENT_TYPE: codec.JSON},
        )


async def announce_ended(nc: Client, worker_id: str, ended: str) -> None:
    """``tether.events.worker.<drained|stopped>`` (best effort: the worker is going away either way)."""
    with contextlib.suppress(Exception):
        await nc.publish(
            subjects.event_subject("worker", ended),
            codec.encode({"kind": "worker", "workerId": worker_id, "state": ended.upper(), "ts": time.time()}),
            headers={**telemetry.child_headers(None), codec.CONTENT_TYPE: codec.JSON},
        )
