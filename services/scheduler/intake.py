"""Turning a JetStream JOBS message into a job the scheduler can place.

The subject names tenant, model and version; the payload (JSON unless the
Content-Type header says msgpack) is a ``JobSubmission``. The job id is the
payload's ``jobId``, else the ``Nats-Msg-Id`` header, else ``job-<stream seq>``
(stable across redeliveries). Bad input still yields a ``JobKey`` so the job
can be given a final error result instead of being dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from schemas import JobSubmission, parse
from tether import codec, subjects, telemetry
from tether.errors import TetherError
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
    meta = msg.metadata
    ticket = ticket_from(
        msg.subject,
        msg.data,
        dict(msg.headers or {}),
        seq=meta.sequence.stream if meta and meta.sequence else 0,
        enqueued_at=meta.timestamp.timestamp() if meta and meta.timestamp else 0.0,
        settings=settings,
    )
    ticket.deliveries = meta.num_delivered if meta and meta.num_delivered else 1
    return ticket


def ticket_from(
    subject: str, data: bytes, headers: dict[str, str], *, seq: int, enqueued_at: float, settings: Settings
) -> Ticket:
    """A ticket from a JOBS message however it was read (delivery, or a direct get by sequence)."""
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

    job_id = _job_id(submission, body, headers, seq)
    correlation_id = headers.get(telemetry.CORRELATION_ID) or job_id
    key = JobKey(
        job_id=job_id,
        tenant_id=tenant,
        model_id=model,
        version=version,
        correlation_id=correlation_id,
        idempotency_key=submission.idempotency_key if submission else None,
        created_at=(submission.submitted_at if submission and submission.submitted_at else enqueued_at),
    )
    if error is not None:
        error.job_id = job_id
    return Ticket(key, headers, submission, error, seq, enqueued_at)


def _job_id(submission: JobSubmission | None, body: Any, headers: dict[str, str], seq: int) -> str:
    if submission is not None and submission.job_id:
        return submission.job_id
    if isinstance(body, dict) and isinstance(body.get("jobId"), str) and body["jobId"].strip():
        candidate = body["jobId"].strip()
        if len(candidate) <= 200:
            return candidate
    if headers.get("Nats-Msg-Id"):
        return headers["Nats-Msg-Id"]
    return f"job-{seq}"
