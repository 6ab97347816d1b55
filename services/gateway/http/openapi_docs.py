"""OpenAPI for routes that read their body themselves (to answer with Tether's error codes rather than
FastAPI's 422): the pydantic wire models are registered as components, and ``build_spec`` returns the
spec that ``/openapi.json`` serves and ``schemas/openapi.json`` commits (``openapi_file``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from schemas import ErrorReply

REF = "#/components/schemas/{model}"
_COMPONENTS: dict[str, type[BaseModel]] = {}


def ref(model: type[BaseModel]) -> dict[str, str]:
    _COMPONENTS[model.__name__] = model
    return {"$ref": REF.format(model=model.__name__)}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref(model)}}}}


def json_response(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(model)}}}


_WHY = {
    400: "invalid_request: a field is missing, malformed or out of range (the error names it)",
    401: "unauthorized: missing, unknown or revoked API key, or another tenant's",
    404: "model_unknown (or not_found for a job)",
    409: "conflict: the Idempotency-Key was used with a different body",
    413: "payload_too_large: the body is over TETHER_MAX_PAYLOAD",
    429: "quota_exceeded: over the tenant's rate; Retry-After says when to retry",
    503: "no_capacity: the model's queue is past its threshold; Retry-After says when to retry",
    504: "timeout: no result in time; the job continues, GET /jobs/{jobId} has it later",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: json_response(ErrorReply, _WHY[status]) for status in statuses}


def build_spec(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, model in sorted(_COMPONENTS.items()):
        schema = model.model_json_schema(by_alias=True, ref_template=REF, mode="validation")
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(def_name, definition)
        schemas[name] = schema
    return spec
