"""The subject map, in one place.

Model ids, versions and job ids may contain characters NATS subjects cannot
carry in one token (``.``, ``*``, ``>``, whitespace) or that we reserve
(``/``, ``:``). ``encode_token`` maps a string to one subject-safe token by a
reversible rule: every byte outside ``[A-Za-z0-9_-]`` becomes ``~XX`` (two
upper-case hex digits of its UTF-8 byte), so ``Qwen/Qwen2.5-0.5B`` becomes
``Qwen~2FQwen2~2E5-0~2E5B`` and ``echo`` stays ``echo``. ``decode_token``
inverts it.
"""

from __future__ import annotations

import functools
import re

from tether.errors import InvalidRequest

PREFIX = "tether"
INFER = f"{PREFIX}.infer"
INFER_TENANT_ALL = f"{PREFIX}.infer.*"  # tether.infer.<tenant>: the tenant is fixed by who may publish there
JOBS_ALL = f"{PREFIX}.jobs.>"
RESULTS_ALL = f"{PREFIX}.results.*"
CHUNKS_ALL = f"{PREFIX}.results.*.chunks"
PRESENCE_ALL = f"{PREFIX}.presence.>"
MODELS_ALL = f"{PREFIX}.models.>"
DLQ_ALL = f"{PREFIX}.dlq.>"
CONTROL_ALL = f"{PREFIX}.control.>"
EVENTS_ALL = f"{PREFIX}.events.>"

_SAFE = re.compile(rb"[A-Za-z0-9_-]")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")
_TOKEN_OK = re.compile(r"^[A-Za-z0-9_~-]+$")


_ALL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


@functools.lru_cache(maxsize=4096)
def encode_token(value: str) -> str:
    if _ALL_SAFE.fullmatch(value):
        return value
    if not value:
        raise InvalidRequest("empty subject token")
    out: list[str] = []
    for b in value.encode():
        ch = bytes((b,))
        out.append(ch.decode() if _SAFE.fullmatch(ch) else f"~{b:02X}")
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def decode_token(token: str) -> str:
    if not _TOKEN_OK.match(token):
        raise InvalidRequest(f"not an encoded subject token: {token!r}")
    if "~" not in token:  # nothing escaped: the token is the value (the common case)
        return token
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "~":
            m = _ESCAPE.match(token, i)
            if not m:
                raise InvalidRequest(f"bad escape in subject token: {token!r}")
            raw.append(int(m.group(1), 16))
            i += 3
        else:
            raw.extend(token[i].encode())
            i += 1
    try:
        value = raw.decode()
    except UnicodeDecodeError:
        raise InvalidRequest(f"subject token is not UTF-8: {token!r}") from None
    if encode_token(value) != token:  # one spelling per id: no escapes for characters that need none
        raise InvalidRequest(f"subject token is not in canonical form: {token!r}")
    return value


def job_subject(tenant: str, model: str, version: str) -> str:
    return f"{PREFIX}.jobs.{encode_token(tenant)}.{encode_token(model)}.{encode_token(version)}"


def parse_job_subject(subject: str) -> tuple[str, str, str]:
    """``tether.jobs.<tenant>.<model>.<version>`` -> (tenant, model, version)."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != PREFIX or parts[1] != "jobs":
        raise InvalidRequest(
            f"job subject must be tether.jobs.<tenant>.<model>.<version>, got {subject!r}", field="subject"
        )
    try:
        return decode_token(parts[2]), decode_token(parts[3]), decode_token(parts[4])
    except InvalidRequest as exc:
        exc.field = "subject"
        raise


def infer_subject(tenant: str) -> str:
    return f"{INFER}.{encode_token(tenant)}"


def tenant_from_infer_subject(subject: str) -> str:
    parts = subject.split(".")
    if len(parts) != 3 or f"{parts[0]}.{parts[1]}" != INFER:
        raise InvalidRequest(f"infer subject must be tether.infer.<tenant>, got {subject!r}")
    return decode_token(parts[2])


def result_subject(job_id: str) -> str:
    return f"{PREFIX}.results.{encode_token(job_id)}"


def job_id_from_result_subject(subject: str) -> str:
    return decode_token(subject.split(".")[2])


def chunks_subject(job_id: str) -> str:
    return f"{result_subject(job_id)}.chunks"


def presence_subject(region: str, worker_id: str) -> str:
    return f"{PREFIX}.presence.{encode_token(region)}.{encode_token(worker_id)}"


def model_subject(model: str, version: str, region: str) -> str:
    return f"{PREFIX}.models.{encode_token(model)}.{encode_token(version)}.{encode_token(region)}"


def dispatch_subject(worker_id: str) -> str:
    return f"{PREFIX}.dispatch.{encode_token(worker_id)}"


def report_subject(scheduler_id: str) -> str:
    """The scheduler's report prefix (a dispatch's ``reportTo``): workers report on ``<it>.<worker>``."""
    return f"{PREFIX}.reports.{encode_token(scheduler_id)}"


def worker_report_subject(report_to: str, worker_id: str) -> str:
    """Where ``worker_id`` reports to the scheduler whose prefix is ``report_to`` (core NATS).

    The last token names the sender, and NATS permissions let each worker's user publish only
    on its own (``tether.reports.*.<worker>``): a worker cannot speak for another's attempts.
    """
    return f"{report_to}.{encode_token(worker_id)}"


def worker_from_report_subject(subject: str) -> str:
    """The sending worker's id from ``tether.reports.<scheduler>.<worker>``."""
    return decode_token(subject.rsplit(".", 1)[-1])


def dlq_subject(model: str, version: str) -> str:
    return f"{PREFIX}.dlq.{encode_token(model)}.{encode_token(version)}"


def control_subject(action: str, target: str = "all") -> str:
    return f"{PREFIX}.control.{action}.{encode_token(target)}"


def control_wildcard(action: str) -> str:
    """Every target of one control action, e.g. ``tether.control.drain.*``."""
    return f"{PREFIX}.control.{action}.*"


def event_subject(kind: str, state: str) -> str:
    return f"{PREFIX}.events.{kind}.{state}"
