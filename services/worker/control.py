"""Operator orders to workers on ``tether.control.<action>.<worker>`` (or ``.all``), besides cancels.

* ``evict`` ``{"modelId", "version"?}``: unload a warm model now (it stays served and loads again
  on its next job); refused, with the reason, for a pinned model or one running a job. The worker
  answers ``{"workerId", "modelId", "version", "evicted", "reason"?}`` when the order has a reply
  subject (``tether evict``).

Drains are the worker's own (``Worker.drain``): they end the process.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from tether import codec

if TYPE_CHECKING:
    from services.worker.model_cache import ModelCache

log = logging.getLogger(__name__)


async def on_evict(cache: ModelCache, worker_id: str, msg: Msg) -> dict[str, Any]:
    """Carry out one evict order; the answer (also sent to ``msg.reply`` when there is one)."""
    answer: dict[str, Any] = {"workerId": worker_id, "evicted": False}
    try:
        body = codec.decode(msg.data, codec.content_type_of(msg.headers)) if msg.data else {}
        model_id, version = str(body["modelId"]), str(body.get("version") or "1")
    except Exception as exc:  # an order that names no model changes nothing
        answer["reason"] = f"an evict order needs {{'modelId', 'version'?}}: {type(exc).__name__}: {exc}"
    else:
        answer.update(modelId=model_id, version=version)
        why_not = await cache.evict((model_id, version))
        answer["evicted"] = why_not is None
        if why_not is not None:
            answer["reason"] = why_not
        log.warning("evict ordered", extra={"worker": worker_id, "model": model_id, "outcome": answer})
    if msg.reply and msg._client is not None:
        with contextlib.suppress(Exception):
            await msg._client.publish(msg.reply, codec.encode(answer), headers={codec.CONTENT_TYPE: codec.JSON})
    return answer
