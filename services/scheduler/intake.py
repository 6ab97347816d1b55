"""Turning a JetStream JOBS message into a job the scheduler can place.

The subject names tenant, model and version; the payload (JSON unless the
Content-Type header says msgpack) is a ``JobSubmission``. The job id is the
payload's ``jobId``, else the ``Nats-Msg-Id`` header, else ``job-<stream seq>-<stored µs>``
(stable across redeliveries). Bad input still yields a ``JobKey`` so the job
can be given a final error result instead of being dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.msg import Msg

from schemas import JobSubmission, parse
from schemas.messages import MAX_JOB_ID
from tether import codec, subjects, telemetry
from tether.errors import InvalidRequest, TetherError
from tether.limits import check_params, check_size
from tether.settings import Settings
from tether.store import JobKey

UNKNOWN = "?"


@dataclass(slots=True)
class Ticket:
    key: JobKey
    headers: dict[str, str]
    submission: JobSubmission | None = None
    error: TetherError | None = None
    stream_seq: int = 0
    enqueued_at: float = 0.0  # when JetStream accepted it
    deliveries: int = 1  # how many times JetStream has handed this job to a scheduler

    @property
    def job_id(self) -> str:
        return self.key.job_id


def read_ticket(msg: Msg, settings: Settings) -> Ticket:
    """The ticket of a job delivered by the JOBS consumer."""
    seq, deliveries, stored_ns = delivery_of(msg.reply)
    ticket = ticket_from(
        msg.subject, msg.data, dict(msg.headers or {}), seq=seq, stored_ns=stored_ns, settings=settings
    )
    ticket.deliveries = deliveries or 1
    return ticket


def delivery_of(reply: str | None) -> tuple[int, int, int]:
    """``(stream sequence, deliveries, stored at in ns)`` from a JetStream delivery's ack subject; zeros if none.

    What nats-py's ``Msg.metadata`` reads, without its frozen dataclasses and ``datetime``
    (a third of the cost of reading a ticket). Both ack-subject forms: ``$JS.ACK.<stream>.
    <consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`` and the longer one
    with a domain and account hash in front of the stream.
    """
    tokens = reply.split(".") if reply else ()
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return 0, 0, 0
    try:
        if len(tokens) == 9:
            return int(tokens[5]), int(tokens[4]), int(tokens[7])
        if len(tokens) >= 11:
            return int(tokens[7]), int(tokens[6]), int(tokens[9])
    except ValueError:
        pass
    return 0, 0, 0


def ticket_from(
    subject: str, data: bytes, headers: dict[str, str], *, seq: int, stored_ns: int, settings: Settings
) -> Ticket:
    """A ticket from a JOBS message however it was read (delivery, or a direct get by sequence);
    ``stored_ns``: when JetStream stored it (0 if unknown)."""
    enqueued_at = stored_ns / 1e9
    error: TetherError | None = None
    try:
        tenant, model, version = subjects.parse_job_subject(subject)
    except TetherError as exc:
        tenant, model, version, error = UNKNOWN, UNKNOWN, UNKNOWN, exc

    body: Any = None
    submission: JobSubmission | None = None
    try:
        check_size(len(data), settings)
        body = codec.decode(data, codec.content_type_of(headers))
        submission = parse(JobSubmission, body)
        check_params(submission.params, settings)
    except TetherError as exc:
        error = error or exc
        if body is None:  # refused before decoding (size, Content-Type): its jobId still names the job
            body = _best_effort_body(data)

    job_id, refused = _job_id(submission, body, headers, seq, stored_ns)
    error = error or refused
    correlation_id = headers.get(telemetry.CORRELATION_ID) or job_id
    key = JobKey(
        job_id=job_id,
        tenant_id=tenant,
        model_id=model,
        version=version,
        correlation_id=correlation_id,
        idempotency_key=submission.idempotency_key if submission else None,
        created_at=_created_at(submission, enqueued_at),
    )
    if error is not None:
        error.job_id = job_id
    return Ticket(key, headers, submission, error, seq, enqueued_at)


def _best_effort_body(data: bytes) -> Any:
    """The body as JSON, else msgpack, only to find the ``jobId`` its publisher waits on; None if neither."""
    for ctype in (codec.JSON, codec.MSGPACK):
        try:
            return codec.decode(data, ctype)
        except TetherError:
            continue
    return None


def _created_at(submission: JobSubmission | None, enqueued_at: float) -> float:
    """When the job was submitted: the client's ``submittedAt``, but never after JetStream stored it (a
    bare publish could claim any time: one far in the future would sit atop every listing)."""
    claimed = submission.submitted_at if submission else None
    return min(claimed, enqueued_at) if claimed is not None and claimed > 0 else enqueued_at


def stored_ns_of(stored: datetime | None) -> int:
    """A direct get's stored time (nats-py keeps µs of the server's ns) as integer ns, exactly: the
    delivery path's ns from the ack subject, cut to the same µs, agree with it."""
    if stored is None:
        return 0
    return (stored - _EPOCH) // timedelta(microseconds=1) * 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def generated_job_id(seq: int, stored_ns: int) -> str:
    """``job-<stream sequence>-<stored at, µs, hex>``: the same on every delivery and on the dead-letter
    path (which reads the stored time at µs precision), and never an id a client chose before or one a
    recreated JOBS stream handed out already (its sequence numbers start again)."""
    return f"job-{seq}-{stored_ns // 1000:x}" if stored_ns > 0 else f"job-{seq}"


def _job_id(
    submission: JobSubmission | None, body: Any, headers: dict[str, str], seq: int, stored_ns: int
) -> tuple[str, TetherError | None]:
    """The job's id: the body's ``jobId``, else ``Nats-Msg-Id``, else ``generated_job_id``.

    An id over ``MAX_JOB_ID`` characters is never used: its result subject (up to three
    characters per byte once encoded) could pass nats-server's control-line limit, which
    closes the connection of whoever publishes it. Such a job gets a generated id and a final
    ``invalid_request`` there.
    """
    if submission is not None and submission.job_id:
        return submission.job_id, None
    if isinstance(body, dict) and isinstance(body.get("jobId"), str) and body["jobId"].strip():
        candidate = body["jobId"].strip()
        if len(candidate) <= MAX_JOB_ID:
            return candidate, None
    header = (headers.get("Nats-Msg-Id") or "").strip()
    if not header:
        return generated_job_id(seq, stored_ns), None
    if len(header) <= MAX_JOB_ID:
        return header, None
    return generated_job_id(seq, stored_ns), InvalidRequest(
        f"the Nats-Msg-Id header is {len(header)} characters; a job id is at most {MAX_JOB_ID}",
        field="Nats-Msg-Id",
    )
