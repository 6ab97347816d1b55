"""Tether's one error tree. Each error's ``code`` is also its wire error code.

    TetherError                      code              retryable
    ├── InvalidRequest               invalid_request   no
    │   └── PayloadTooLarge          payload_too_large no
    ├── ModelUnknown                 model_unknown     no
    ├── QuotaExceeded                quota_exceeded    yes
    ├── NoCapacity                   no_capacity       yes
    ├── Timeout                      timeout           yes
    ├── WorkerFailed                 worker_failed     yes
    ├── Cancelled                    cancelled         no
    ├── DeadLettered                 dead_lettered     no
    ├── Conflict                     conflict          no
    ├── Unauthorized                 unauthorized      no
    │   └── SignatureInvalid         signature_invalid no
    ├── ArtifactInvalid              artifact_invalid  no
    ├── StoreError                   store_unavailable yes
    └── Internal                     internal          yes

Errors travel as data: ``{"code", "message", "retryable", "jobId"?, "field"?, "retryAfterS"?}``
(``ErrorInfo`` in ``schemas``). ``TetherError.to_wire()`` produces it and
``error_from_wire()`` turns it back into the matching exception.
"""

from __future__ import annotations

from typing import Any, ClassVar

#: Characters of an error's message and field on the wire; the rest is cut, saying how much.
MAX_MESSAGE = 4096
MAX_FIELD = 128


def _bounded(text: str, limit: int, *, cut_already: bool = False) -> str:
    """``text`` cut to ``limit`` characters, saying how many were cut (``cut_already``: leave a text
    this cut once alone, e.g. a message bounded when its error was made)."""
    if len(text) <= limit or (cut_already and len(text) <= limit + 48 and text.endswith(" more characters)")):
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class TetherError(Exception):
    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        field: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        message = _bounded(message, MAX_MESSAGE)  # stored, logged and sent: never unbounded
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.field = field
        self.retry_after_s = retry_after_s  # when a retry may succeed (quota refill, shed)

    def to_wire(self) -> dict[str, Any]:
        """The wire form; message and field bounded (``MAX_MESSAGE``, ``MAX_FIELD``), so an error that
        quotes what it refused is never too large to travel (it would be no answer at all)."""
        out: dict[str, Any] = {
            "code": self.code, "message": _bounded(self.message, MAX_MESSAGE, cut_already=True),
            "retryable": self.retryable,
        }
        if self.job_id is not None:
            out["jobId"] = self.job_id
        if self.field is not None:
            out["field"] = _bounded(self.field, MAX_FIELD)
        if self.retry_after_s is not None:
            out["retryAfterS"] = round(self.retry_after_s, 3)
        return out


class InvalidRequest(TetherError):
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class ModelUnknown(TetherError):
    code = "model_unknown"


class QuotaExceeded(TetherError):
    code = "quota_exceeded"
    retryable = True


class NoCapacity(TetherError):
    code = "no_capacity"
    retryable = True


class Timeout(TetherError):
    code = "timeout"
    retryable = True


class WorkerFailed(TetherError):
    code = "worker_failed"
    retryable = True


class Cancelled(TetherError):
    """The client (or an operator) cancelled the job; its decoding stopped."""

    code = "cancelled"


class DeadLettered(TetherError):
    code = "dead_lettered"


class Conflict(TetherError):
    """The request contradicts an earlier one (an idempotency key reused with a different body)."""

    code = "conflict"


class Unauthorized(TetherError):
    code = "unauthorized"


class SignatureInvalid(Unauthorized):
    code = "signature_invalid"


class ArtifactInvalid(TetherError):
    code = "artifact_invalid"


class KeyFileInvalid(TetherError, ValueError):
    """A node's key file cannot be used: not a key file, another role's, or readable by other users."""

    code = "key_file_invalid"


class StoreError(TetherError):
    code = "store_unavailable"
    retryable = True


class Internal(TetherError):
    code = "internal"
    retryable = True


_BY_CODE: dict[str, type[TetherError]] = {}


def _index(cls: type[TetherError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _index(sub)


_index(TetherError)

ERROR_CODES: tuple[str, ...] = tuple(sorted(_BY_CODE))


def error_from_wire(data: dict[str, Any]) -> TetherError:
    """Rebuild the exception a wire error describes (unknown codes become ``TetherError``)."""
    cls = _BY_CODE.get(str(data.get("code")), TetherError)
    retry_after = data.get("retryAfterS")
    return cls(
        str(data.get("message", "")),
        job_id=data.get("jobId"),
        field=data.get("field"),
        retry_after_s=float(retry_after) if isinstance(retry_after, int | float) else None,
    )
