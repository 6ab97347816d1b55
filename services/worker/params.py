"""Wire params (``InferParams``) to runtime params (``GenerationParams``)."""

from __future__ import annotations

from typing import Any

from schemas import InferParams
from services.worker.runtimes.base import GenerationParams

_NO_PARAMS = InferParams()


def generation_params(wire: dict[str, Any] | None, *, default_max_new_tokens: int = 64) -> GenerationParams:
    p = InferParams.model_validate(wire) if wire else _NO_PARAMS  # most jobs send none: no validation for them
    g = GenerationParams(max_new_tokens=p.max_new_tokens or default_max_new_tokens)
    if p.temperature is not None:
        g.temperature = p.temperature
    if p.top_p is not None:
        g.top_p = p.top_p
    if p.top_k is not None:
        g.top_k = p.top_k
    g.seed = p.seed
    if p.stop:
        g.stop = list(p.stop)
    g.chat = p.chat
    if p.normalize is not None:
        g.normalize = p.normalize
    return g
