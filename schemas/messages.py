"""Wire messages: the single source of truth for every public payload.

Field names are camelCase on the wire (the seed pilot's ``tenantId``,
``modelId``), snake_case in Python. Models a client sends are strict and
forbid unknown fields, so a typo is an ``invalid_request`` naming the field
rather than a silently ignored option.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from tether.errors import InvalidRequest

Name = Annotated[str, StringConstraints(min_length=1, max_length=256, strip_whitespace=True)]
#: A job id's longest form: its result subject (up to 3 characters per byte, encoded) stays far
#: inside nats-server's control-line limit.
MAX_JOB_ID = 200
#: The most jobs a worker may announce it runs at once (``Presence.capacity``).
MAX_WORKER_CAPACITY = 65_536
JobId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_JOB_ID, pattern=r"^[^\s*>]+$")]


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True, allow_inf_nan=False
    )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class _Internal(_Wire):
    """Messages between Tether's own processes: tolerant of fields added by newer versions."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", strict=False, allow_inf_nan=False
    )


_M = TypeVar("_M", bound=BaseModel)


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


#: Texts one embeddings request may carry (OpenAI's limit too): each costs a vector in the result.
MAX_INPUTS = 2048

Input = (
    Annotated[str, StringConstraints(min_length=1)]
    | Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_INPUTS)]
    | Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1, max_length=MAX_INPUTS)]
)


class InferParams(_Wire):
    """Generation and embedding knobs; every field optional."""

    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # what msgpack and torch can carry
    stop: list[str] | None = Field(default=None, max_length=16)
    chat: bool | None = None
    normalize: bool | None = None
    timeout_s: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    region: str | None = Field(default=None, min_length=1, max_length=64)  # placement: preferred region
    device_class: str | None = Field(default=None, min_length=1, max_length=64)  # e.g. "cpu", "cuda"
    min_tier: int | None = Field(default=None, ge=1, le=3)  # placement: lowest hardware tier accepted


class InferRequest(_Wire):
    """Client -> gateway on ``tether.infer`` (and the body of HTTP ``POST /infer``)."""

    tenant_id: Name
    model_id: Name
    version: Name = "1"
    input: Input
    params: InferParams | None = None
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


class JobSubmission(_Wire):
    """The payload on ``tether.jobs.<tenant>.<model>.<version>`` (JetStream ``JOBS``).

    Tenant, model and version come from the subject. ``jobId`` is optional: the
    ``Nats-Msg-Id`` header, or failing that a generated id, takes its place.
    """

    job_id: JobId | None = None
    input: Input
    params: InferParams | None = None
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    submitted_at: float | None = None

    @staticmethod
    def wire_of(req: InferRequest, job_id: str, submitted_at: float) -> dict[str, Any]:
        """The wire form of the submission of validated request ``req``: what
        ``JobSubmission(job_id=..., input=req.input, ...).wire()`` gives, without validating
        again what ``req`` already holds (the gateway does this for every job)."""
        body = req.model_dump(by_alias=True, exclude_none=True, mode="json", include=_SUBMITTED)
        body["jobId"] = job_id
        body["submittedAt"] = submitted_at
        return body


#: The request's fields a submission carries (tenant, model and version travel in its subject).
_SUBMITTED = frozenset(JobSubmission.model_fields.keys() & InferRequest.model_fields.keys())


class ErrorInfo(_Internal):
    code: str
    message: str
    retryable: bool = False
    job_id: str | None = None
    field: str | None = None
    retry_after_s: float | None = None


class ErrorReply(_Internal):
    error: ErrorInfo


class Usage(_Internal):
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str = "stop"
    ttft_ms: float | None = None  # time to first token on the worker (generation)
    cold_start: bool | None = None  # true when the model was not warm on the worker (the job waited for a load)


class InferReply(_Internal):
    """Gateway -> client: the one final answer."""

    job_id: str
    result: Any
    model_id: str
    version: str
    worker_id: str
    attempts: int = 1
    usage: Usage | None = None
    latency_ms: float | None = None
    requested_model_id: str | None = None  # set when another model served it (an alias, or degraded)
    requested_version: str | None = None
    degraded: bool | None = None  # true when the queue was deep and the tenant's policy allowed a fallback
    canary: bool | None = None  # true when a canary rollout sent it to the new version


class ResultStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


class ResultMessage(_Internal):
    """The one final result on ``tether.results.<job>`` (JetStream ``RESULTS``, replayable)."""

    job_id: str
    status: ResultStatus
    tenant_id: str
    model_id: str
    version: str
    result: Any = None
    error: ErrorInfo | None = None
    worker_id: str | None = None
    attempts: int = 1
    usage: Usage | None = None
    started_at: float | None = None
    finished_at: float


class ModelState(StrEnum):
    WARM = "warm"
    LOADING = "loading"
    EVICTED = "evicted"
    FAILED = "failed"


class ServedModel(_Internal):
    model_id: str
    version: str
    task: str
    state: ModelState
    progress: float | None = None  # 0..1 while loading
    size_mb: float | None = None  # measured once warm
    pinned: bool = False


class Presence(_Internal):
    """Worker -> schedulers every T seconds on ``tether.presence.<region>.<worker>``."""

    worker_id: str
    region: str
    device_class: str
    # a worker that can take no job at all does not announce itself; one claiming more than it
    # could hold would draw jobs it can only refuse
    capacity: int = Field(ge=1, le=MAX_WORKER_CAPACITY)
    queue_depth: int = Field(ge=0)
    models: list[ServedModel]
    heartbeat_s: float = Field(gt=0.0, allow_inf_nan=False)
    started_at: float
    seq: int
    ts: float
    cpu_percent: float | None = None
    mem_percent: float | None = None
    draining: bool = False
    rss_mb: float | None = None
    gpu_mem_used_mb: float | None = None
    gpu_mem_total_mb: float | None = None
    gpu_util_percent: float | None = None
    gflops: float | None = None  # admission benchmark: matmul throughput in the serving dtype
    max_alloc_mb: float | None = None  # admission benchmark: largest stable allocation
    bench_dtype: str | None = None


class ModelAnnouncement(_Internal):
    """Worker -> schedulers on ``tether.models.<model>.<version>.<region>``."""

    worker_id: str
    model_id: str
    version: str
    region: str
    task: str
    state: ModelState
    ts: float
    detail: str | None = None
    progress: float | None = None  # 0..1 while loading
    size_mb: float | None = None  # measured once warm


class ResumePrefix(_Internal):
    """What earlier attempts of a streaming job already delivered: the next attempt continues after it."""

    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    seq: int = 0  # the next chunk's sequence number


class Dispatch(_Internal):
    """One assignment: an attempt of a job on a worker (carried inside a ``DispatchBatch``)."""

    job_id: str
    attempt: int
    retry_token: str
    tenant_id: str
    model_id: str
    version: str
    input: Any
    params: dict[str, Any] = Field(default_factory=dict)
    report_to: str
    scheduler_id: str
    deadline: float
    trace: dict[str, str] = Field(default_factory=dict)  # the job's correlation-id and traceparent
    resume: ResumePrefix | None = None  # streamed output already delivered by earlier attempts


class DispatchBatch(_Internal):
    """Scheduler -> worker on ``tether.dispatch.<worker>``: the assignments made in one event-loop turn.

    The worker answers on ``<report_to>.<worker id>`` with a ``ReportBatch``: an ack
    (accept or refuse) per assignment, then a report per finished attempt. Batching keeps the
    message count per job low under load without adding latency (a batch leaves in
    the same loop turn its first assignment was made).
    """

    scheduler_id: str
    report_to: str
    items: list[Dispatch]


class DispatchAck(_Internal):
    accepted: bool
    worker_id: str
    job_id: str = ""
    attempt: int = 0
    error: ErrorInfo | None = None


class AttemptReport(_Internal):
    """Worker -> the dispatching scheduler: how an attempt ended."""

    job_id: str
    attempt: int
    worker_id: str
    ok: bool
    error: ErrorInfo | None = None
    started_at: float
    finished_at: float


class ReportBatch(_Internal):
    """Worker -> the dispatching scheduler on ``tether.reports.<scheduler>``: acks and finished attempts.

    A report implies acceptance, so an ack whose attempt already finished is not sent.
    """

    worker_id: str
    acks: list[DispatchAck] = Field(default_factory=list)
    reports: list[AttemptReport] = Field(default_factory=list)


class ResultChunk(_Internal):
    """Worker -> any subscriber on ``tether.results.<job>.chunks`` (core NATS, not persisted).

    ``seq`` counts chunks of the job from 0 across attempts: a resumed attempt
    continues the sequence after the prefix already delivered, so a client never
    sees a gap or a repeat. ``offset`` is the number of generated tokens before
    this chunk. The final result still arrives on ``tether.results.<job>``.
    """

    job_id: str
    seq: int
    text: str
    offset: int = 0
    token_ids: list[int] | None = None
    attempt: int = 1
    worker_id: str | None = None
    ts: float | None = None


class CancelRequest(_Internal):
    """Anyone -> the fleet on ``tether.control.cancel.<job>``: stop the job within one decoding step."""

    job_id: str
    reason: str = "cancelled by client"
    attempt: int | None = None  # only this attempt (a scheduler re-placing the job); None: the job


def parse(model: type[_M], data: Any) -> _M:
    """Validate ``data`` as ``model``; failures become ``InvalidRequest`` naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"expected an object for {model.__name__}, got {type(data).__name__}", field="body"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc), field=_field_of(exc)) from None


def _field_of(exc: ValidationError) -> str:
    """The field path (an unknown key of any length: ``TetherError.to_wire`` bounds what travels)."""
    loc = exc.errors()[0]["loc"]
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or "-" in p))) or "body"


def _describe(exc: ValidationError) -> str:
    errors = exc.errors()
    field = _field_of(exc)
    first = errors[0]
    kind = first["type"]
    if kind == "missing":
        return f"field {field!r} is required"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}"
    if field == "input" or field.startswith("input."):
        if any(e["type"] == "too_long" for e in errors):
            return f"field 'input' carries more than {MAX_INPUTS} items; split the request"
        return "field 'input' must be a non-empty string, a non-empty list of strings, or a list of chat messages"
    return f"field {field!r}: {first['msg']}"


PUBLIC_MESSAGES: dict[str, type[BaseModel]] = {
    "infer_request": InferRequest,
    "infer_reply": InferReply,
    "error_reply": ErrorReply,
    "job_submission": JobSubmission,
    "result_message": ResultMessage,
    "presence": Presence,
    "model_announcement": ModelAnnouncement,
    "dispatch": Dispatch,
    "dispatch_batch": DispatchBatch,
    "dispatch_ack": DispatchAck,
    "attempt_report": AttemptReport,
    "report_batch": ReportBatch,
    "result_chunk": ResultChunk,
    "cancel_request": CancelRequest,
}
