"""Request limits from configuration, enforced before anything is queued."""

from __future__ import annotations

from schemas import InferParams
from tether.errors import InvalidRequest, PayloadTooLarge
from tether.settings import Settings


def check_size(size: int, settings: Settings) -> None:
    if size > settings.max_payload:
        raise PayloadTooLarge(f"payload is {size} bytes; the limit is {settings.max_payload}", field="body")


def check_params(params: InferParams | None, settings: Settings) -> None:
    if params and params.max_new_tokens and params.max_new_tokens > settings.max_new_tokens:
        raise InvalidRequest(
            f"params.maxNewTokens {params.max_new_tokens} exceeds the limit {settings.max_new_tokens}",
            field="params.maxNewTokens",
        )
    if params and params.timeout_s and params.timeout_s > settings.exec_timeout_cap_s:
        # no attempt may run longer than the cap: a longer wait would only hold the caller's connection
        raise InvalidRequest(
            f"params.timeoutS {params.timeout_s:g} exceeds the limit {settings.exec_timeout_cap_s:g}",
            field="params.timeoutS",
        )
