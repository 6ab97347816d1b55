"""OpenAI request bodies and the translation to and from Tether's ``InferRequest`` / ``InferReply``.

Model names: ``id`` is version ``1``; ``id@version`` names another version (``GET /v1/models`` lists
them that way). Parameters OpenAI defines but Tether does not serve (``n`` > 1, tools, functions,
``response_format`` other than text, ``logprobs``, ``logit_bias``, penalties, ``echo``, ``best_of``,
``suffix``, ``dimensions``, token arrays) are refused with ``invalid_request`` naming the parameter
rather than silently ignored, unless they carry their default value (what a client sends unasked);
unknown extra fields are ignored, as OpenAI-compatible servers usually do.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import InferReply, InferRequest, parse
from tether.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)

FINISH_REASONS = frozenset({"stop", "length"})


class _OpenAI(BaseModel):
    model_config = ConfigDict(extra="ignore")

    #: OpenAI parameters Tether does not serve -> the values that ask for nothing (accepted)
    unsupported: ClassVar[dict[str, tuple[Any, ...]]] = {}


_PENALTIES: dict[str, tuple[Any, ...]] = {
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
}


class _Sampling(_OpenAI):
    model: str = Field(min_length=1, max_length=300)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    n: int | None = Field(default=None, ge=1, le=1, description="only 1 is supported")
    user: str | None = None


class CompletionRequest(_Sampling):
    """Not supported (refused unless default): ``echo``, ``best_of`` > 1, ``suffix``, ``logprobs``,
    ``logit_bias``, ``presence_penalty`` / ``frequency_penalty``, token-array prompts."""

    unsupported = {
        "echo": (None, False),
        "best_of": (None, 1),
        "suffix": (None, ""),
        "logprobs": (None,),
        **_PENALTIES,
    }
    prompt: str | list[str] = Field(description="a prompt, or a list with one prompt")


class ContentPart(_OpenAI):
    type: Literal["text"]
    text: str


class ChatMessageIn(_OpenAI):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Sampling):
    """Not supported (refused unless default): ``tools``, ``tool_choice``, ``functions``,
    ``function_call``, ``response_format`` other than ``{"type": "text"}``, ``logprobs`` /
    ``top_logprobs``, ``logit_bias``, ``presence_penalty`` / ``frequency_penalty``."""

    unsupported = {
        "tools": (None, []),
        "tool_choice": (None, "none"),
        "functions": (None, []),
        "function_call": (None, "none"),
        "response_format": (None, {"type": "text"}),
        "logprobs": (None, False),
        "top_logprobs": (None, 0),
        **_PENALTIES,
    }
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class EmbeddingRequest(_OpenAI):
    """Not supported (refused): ``dimensions``, token-array inputs."""

    unsupported = {"dimensions": (None,)}
    model: str = Field(min_length=1, max_length=300)
    input: str | list[str] = Field(description="a string or a list of strings (token arrays: not supported)")
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


#: What the request names text by, when it sent token ids instead
_TEXT_FIELD: dict[type[BaseModel], str] = {CompletionRequest: "prompt", EmbeddingRequest: "input"}


def parse_openai(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", field="body")
    if issubclass(model, _OpenAI):
        for name, harmless in model.unsupported.items():
            if data.get(name) not in harmless:  # absent, null or the default: nothing asked for
                raise InvalidRequest(f"{name} is not supported", field=name)
    text_field = _TEXT_FIELD.get(model)
    if text_field is not None and _is_tokens(data.get(text_field)):
        raise InvalidRequest(f"{text_field} as token ids is not supported: send text", field=text_field)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"field {field!r}: {first['msg']}", field=field) from None


def _is_tokens(value: Any) -> bool:
    """A token array (``[1, 2]``) or a list of them (``[[1, 2]]``), as OpenAI's prompts may be."""
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    if isinstance(first, list):
        return bool(first) and all(isinstance(t, int) and not isinstance(t, bool) for t in first)
    return isinstance(first, int) and not isinstance(first, bool)


#: Tether's field names (in errors) as the OpenAI parameters that set them
_OPENAI_PARAM = {
    "modelId": "model",
    "version": "model",
    "idempotencyKey": "Idempotency-Key",
    "params.maxNewTokens": "max_tokens",
    "params.temperature": "temperature",
    "params.topP": "top_p",
    "params.seed": "seed",
    "params.stop": "stop",
}


def openai_param(field: str | None, *, text: str = "input", max_tokens: str = "max_tokens") -> str | None:
    """An error's ``field`` named as the OpenAI request names it: ``params.seed`` -> ``seed``,
    ``modelId`` -> ``model``, ``input...`` -> ``text`` (``messages``, ``prompt`` or ``input``)."""
    if field is None:
        return None
    head, dot, rest = field.partition(".")
    if head == "input":
        return text + dot + rest
    if head == "params":
        key = ".".join(field.split(".")[:2])
        name = _OPENAI_PARAM.get(key)
        if name is None:
            return field
        name = max_tokens if name == "max_tokens" else name
        return name + field[len(key):]
    return _OPENAI_PARAM.get(field, field)


def split_model(name: str) -> tuple[str, str]:
    model, sep, version = name.rpartition("@")
    return (model, version) if sep and model and version else (name, "1")


def model_name(model_id: str, version: str) -> str:
    return model_id if version == "1" else f"{model_id}@{version}"


def _params(req: _Sampling, *, chat: bool, max_tokens: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {"chat": chat}
    if max_tokens is not None:
        params["maxNewTokens"] = max_tokens
    if req.temperature is not None:
        params["temperature"] = req.temperature
    if req.top_p is not None:
        params["topP"] = req.top_p
    if req.seed is not None:
        params["seed"] = req.seed
    if req.stop:
        params["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    return params


def _request(tenant: str, model: str, input: Any, params: dict[str, Any] | None, key: str | None) -> InferRequest:
    model_id, version = split_model(model)
    body: dict[str, Any] = {"tenantId": tenant, "modelId": model_id, "version": version, "input": input}
    if params:
        body["params"] = params
    if key is not None:
        body["idempotencyKey"] = key
    return parse(InferRequest, body)


def completion_to_infer(req: CompletionRequest, tenant: str, key: str | None) -> InferRequest:
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if len(prompts) != 1:
        raise InvalidRequest("prompt: exactly one prompt per request is supported", field="prompt")
    return _request(tenant, req.model, prompts[0], _params(req, chat=False, max_tokens=req.max_tokens), key)


def chat_to_infer(req: ChatCompletionRequest, tenant: str, key: str | None) -> InferRequest:
    messages = []
    for m in req.messages:
        content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or [])
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    max_tokens = req.max_completion_tokens or req.max_tokens
    return _request(tenant, req.model, messages, _params(req, chat=True, max_tokens=max_tokens), key)


def embedding_to_infer(req: EmbeddingRequest, tenant: str, key: str | None) -> InferRequest:
    return _request(tenant, req.model, req.input, None, key)


def text_of(result: Any) -> str:
    """A generation's text (a non-text result, as from the echo model on chat input: its last message)."""
    if isinstance(result, str):
        return result
    if isinstance(result, list) and result and isinstance(result[-1], dict):
        return str(result[-1].get("content", ""))
    return ""


def usage(reply: InferReply) -> dict[str, int]:
    tin = reply.usage.tokens_in if reply.usage else 0
    tout = reply.usage.tokens_out if reply.usage else 0
    return {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}


def finish_reason(reply: InferReply) -> str:
    reason = reply.usage.finish_reason if reply.usage else "stop"
    return reason if reason in FINISH_REASONS else "stop"


def completion_response(reply: InferReply, created: int) -> dict[str, Any]:
    return {
        "id": f"cmpl-{reply.job_id}",
        "object": "text_completion",
        "created": created,
        "model": model_name(reply.model_id, reply.version),
        "choices": [
            {"text": text_of(reply.result), "index": 0, "logprobs": None, "finish_reason": finish_reason(reply)}
        ],
        "usage": usage(reply),
    }


def chat_response(reply: InferReply, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{reply.job_id}",
        "object": "chat.completion",
        "created": created,
        "model": model_name(reply.model_id, reply.version),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text_of(reply.result)},
                "finish_reason": finish_reason(reply),
            }
        ],
        "usage": usage(reply),
    }


def _vector(values: Any) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
        raise InvalidRequest("this model does not produce embeddings", field="model")
    return [float(v) for v in values]


def embeddings_response(reply: InferReply, encoding: str, many: bool) -> dict[str, Any]:
    vectors = reply.result if many else [reply.result]
    if not isinstance(vectors, list):
        raise InvalidRequest("this model does not produce embeddings", field="model")
    data = []
    for i, values in enumerate(vectors):
        vec = _vector(values)
        embedding: list[float] | str = (
            base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if encoding == "base64" else vec
        )
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = reply.usage.tokens_in if reply.usage else 0
    return {
        "object": "list",
        "data": data,
        "model": model_name(reply.model_id, reply.version),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def models_list(names: list[tuple[str, str]]) -> dict[str, Any]:
    now = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": model_name(m, v), "object": "model", "created": now, "owned_by": "tether"} for m, v in names
        ],
    }
