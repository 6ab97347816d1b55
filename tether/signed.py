"""Signed presence and model announcements: sealing on the worker, admission on the receiver.

A heartbeat on ``tether.presence.<region>.<worker>`` and an announcement on
``tether.models.<model>.<version>.<region>`` are each one signed envelope
(``tether.envelope``) whose payload is the msgpack of the ``Presence`` /
``ModelAnnouncement`` wire dict; the ``Content-Type`` header is ``ENVELOPE``.

``PresenceGate`` admits a message only if the envelope verifies (allowlisted
worker key, not denied, inside the skew window, nonce unseen) *and* the worker
id both in the subject and in the payload is the id of the signing key, so one
worker cannot speak for another. Rejections are counted by reason on the
verifier and logged once per offender per minute (at most ``max_lines`` lines a
minute in all, with a count of the rest).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from schemas import ModelAnnouncement, Presence
from tether import subjects
from tether.envelope import (
    PURPOSE_MODEL,
    PURPOSE_PRESENCE,
    EnvelopeRejected,
    Pending,
    Verifier,
    open_envelope,
    seal,
)
from tether.errors import InvalidRequest
from tether.identity import Identity, encode_public_key

log = logging.getLogger(__name__)

ENVELOPE = "application/tether-envelope"
_MODELS = f"{subjects.PREFIX}.models."
_M = TypeVar("_M", bound=BaseModel)


def seal_message(identity: Identity, message: Presence | ModelAnnouncement, purpose: str) -> bytes:
    """The signed wire bytes of a presence heartbeat or model announcement."""
    return seal(identity, msgpack.packb(message.wire(), use_bin_type=True), purpose)


def read_unverified(data: bytes) -> dict[str, Any]:
    """The payload dict of a signed heartbeat or announcement, NOT verified (display, debugging)."""
    return dict(msgpack.unpackb(open_envelope(data).payload, raw=False))


def envelope_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**(extra or {}), "Content-Type": ENVELOPE}


class RejectionLog:
    """Logs a rejection once per offender per ``period_s``, and at most ``max_lines`` a period."""

    def __init__(
        self, *, period_s: float = 60.0, max_lines: int = 50, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.period_s = period_s
        self.max_lines = max_lines
        self._clock = clock
        self._last: dict[str, float] = {}
        self._window_start = clock()
        self._lines = 0
        self._suppressed: Counter[str] = Counter()
        self.logged = 0

    def note(self, offender: str, err: EnvelopeRejected) -> bool:
        """Record a rejection; True when it was logged."""
        now = self._clock()
        if now - self._window_start >= self.period_s:
            if self._suppressed:
                log.warning("signed messages rejected (not logged one by one)", extra=dict(self._suppressed))
            self._window_start, self._lines = now, 0
            self._suppressed.clear()
            self._last = {k: t for k, t in self._last.items() if now - t < self.period_s}
        last = self._last.get(offender)
        if (last is not None and now - last < self.period_s) or self._lines >= self.max_lines:
            self._suppressed[err.reason] += 1
            return False
        self._last[offender] = now
        self._lines += 1
        self.logged += 1
        log.warning(
            "signed message rejected", extra={"reason": err.reason, "offender": offender, "error": str(err)}
        )
        return True


def _offender(err: EnvelopeRejected, subject: str) -> str:
    return encode_public_key(err.signer) if err.signer else f"subject:{subject}"


@dataclass(slots=True)
class Admission:
    """A heartbeat or announcement that passed every check but its signature (``PresenceGate.prepare``)."""

    subject: str
    pending: Pending
    worker: str | None  # presence: the worker id the subject names
    model: tuple[str, str] | None  # announcement: (model, version) the subject names


class PresenceGate:
    """Admits signed heartbeats and announcements; everything else is counted and dropped.

    Admission is two calls with the signature checked in between: ``prepare``
    (subject and envelope checks), then ``complete`` (nonce, payload, id binding)
    given the result of ``tether.envelope.signature_ok``, or of a helper process
    (``tether.presence_ingest``).
    """

    def __init__(self, verifier: Verifier, *, rejection_log: RejectionLog | None = None) -> None:
        if verifier.role not in (None, "worker"):
            raise ValueError("a presence gate verifies worker keys")
        self.verifier = verifier
        self.log = rejection_log or RejectionLog()

    @property
    def rejections(self) -> Counter[str]:
        return self.verifier.rejections

    def prepare(self, subject: str, data: bytes, *, now: float | None = None) -> Admission:
        """Subject, envelope and key checks (no signature yet); EnvelopeRejected otherwise.

        A model announcement on ``tether.models.>``, a heartbeat on any other subject.
        """
        try:
            if subject.startswith(_MODELS):
                model = (self._token(subject, 2, 5), self._token(subject, 3, 5))
                pending = self.verifier.prepare(data, purpose=PURPOSE_MODEL, now=now)
                return Admission(subject, pending, None, model)
            worker = self._token(subject, 3, 4)
            pending = self.verifier.prepare(data, purpose=PURPOSE_PRESENCE, now=now, expect_node_id=worker)
            return Admission(subject, pending, worker, None)
        except EnvelopeRejected as err:
            self.log.note(_offender(err, subject), err)
            raise

    def complete(self, adm: Admission, signature_valid: bool) -> Presence | ModelAnnouncement:
        """The admitted message once its signature was checked; EnvelopeRejected otherwise."""
        try:
            env = self.verifier.commit(adm.pending, signature_valid)
            if adm.worker is not None:
                p = self._payload(Presence, env.payload)
                if p.worker_id != adm.worker:
                    raise self.verifier.reject(
                        "id_mismatch",
                        f"payload worker id {p.worker_id!r} is not {adm.worker!r}",
                        env.public_key,
                    )
                return p
            a = self._payload(ModelAnnouncement, env.payload)
            if a.worker_id != env.node_id("worker"):
                msg = f"worker id {a.worker_id!r} is not the signer's"
                raise self.verifier.reject("id_mismatch", msg, env.public_key)
            if (a.model_id, a.version) != adm.model:
                raise self.verifier.reject(
                    "malformed", "announcement does not match its subject", env.public_key
                )
            return a
        except EnvelopeRejected as err:
            if err.signer is None:
                err.signer = adm.pending.envelope.public_key
            self.log.note(_offender(err, adm.subject), err)
            raise

    def _token(self, subject: str, index: int, length: int) -> str:
        parts = subject.split(".")
        try:
            if len(parts) != length or parts[0] != subjects.PREFIX:
                raise InvalidRequest("unexpected subject shape")
            return subjects.decode_token(parts[index])
        except InvalidRequest as e:
            raise self.verifier.reject("malformed", f"subject {subject!r}: {e.message}") from None

    def _payload(self, model: type[_M], payload: bytes) -> _M:
        try:
            return model.model_validate(msgpack.unpackb(payload, raw=False))
        except (ValidationError, ValueError, msgpack.ExtraData, TypeError) as e:
            raise self.verifier.reject("malformed", f"payload is not a {model.__name__}: {e}") from None
