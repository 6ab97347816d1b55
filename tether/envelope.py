"""Signed envelopes: Ed25519-signed, timestamped, nonce-carrying messages (PyNaCl).

Wire format (msgpack): ``[body, signature]`` where

- ``body`` = msgpack ``[1, purpose, public_key(32), timestamp(float, unix s), nonce(16), payload]``
- ``signature`` = Ed25519 over ``CONTEXT + body`` (``CONTEXT = b"tether-envelope-v1\\x00"``).

The signature covers the exact body bytes, so there is no re-encoding on the
verifier side. Version 2 (``seal_pairwise``) is the same but for its last element: a keyed
BLAKE2b-512 tag under the key only the sender and one receiver can derive
(``tether.pairwise``), for messages meant for that receiver alone; only a ``Verifier`` given
the receiver's ``PairKeys`` accepts it. ``CONTEXT`` keeps these signatures from being valid for any other
use of the same key, and ``purpose`` (``presence``, ``model``, ``dispatch``,
``manifest``, ...) keeps an envelope sealed for one purpose from being accepted
for another.

``Verifier.verify`` checks, in this order (cheap checks before the signature):
malformed, wrong_purpose, denied_key, unknown_key, stale, id_mismatch,
replayed (nonce already cached), bad_signature, replayed (a duplicate that was
in flight). A nonce is remembered only after the signature verifies, so forged
traffic cannot fill the nonce cache. Not thread-safe: use
one Verifier per event loop / thread.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from tether.errors import SignatureInvalid
from tether.identity import PUBLIC_KEY_BYTES, ROLE_PREFIX, Identity, encode_public_key, worker_id_for
from tether.nonces import Added, NonceCache
from tether.pairwise import PairKeys, tag
from tether.trust import KeyLike, TrustStore, parse_allowlist

log = logging.getLogger(__name__)

VERSION: Final = 1
VERSION_PAIRWISE: Final = 2  # tagged with a pairwise key (tether.pairwise), not signed
CONTEXT: Final = b"tether-envelope-v1\x00"
NONCE_BYTES: Final = 16
SIGNATURE_BYTES: Final = 64

PURPOSE_PRESENCE: Final = "presence"
PURPOSE_MODEL: Final = "model"
PURPOSE_DISPATCH: Final = "dispatch"
PURPOSE_MANIFEST: Final = "manifest"
_PURPOSE_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")

REASONS: Final = (
    "malformed",
    "bad_signature",
    "unknown_key",
    "denied_key",
    "stale",
    "replayed",
    "wrong_purpose",
    "id_mismatch",
    "flood",  # the signer's share of the nonce cache is used up (fail closed, never forget a nonce early)
)


class EnvelopeRejected(SignatureInvalid):
    """A ``signature_invalid`` error that says why (``reason`` is one of ``REASONS``)."""

    def __init__(
        self, reason: str, message: str, *, job_id: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(f"envelope rejected ({reason}): {message}", job_id=job_id, field=field)
        self.reason = reason
        self.signer: bytes | None = None  # the key the envelope names, when it could be parsed


@dataclass(slots=True)
class Envelope:
    """A parsed envelope. Trust it only when it came from ``Verifier.verify``.

    (Not frozen: a frozen dataclass costs ~4x more to build on the verify hot path.)
    """

    version: int
    purpose: str
    public_key: bytes
    timestamp: float
    nonce: bytes
    payload: bytes
    signature: bytes

    @property
    def public_key_b64(self) -> str:
        return encode_public_key(self.public_key)

    def node_id(self, role: str = "worker") -> str:
        """The signer's node id in ``role``."""
        return worker_id_for(self.public_key, role)


def _check_purpose(purpose: str) -> None:
    if not isinstance(purpose, str) or not _PURPOSE_RE.match(purpose):
        raise ValueError(f"invalid envelope purpose {purpose!r} (want [a-z][a-z0-9._-]{{0,63}})")


def _packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def seal(identity: Identity, payload: bytes, purpose: str, *, timestamp: float | None = None) -> bytes:
    """Sign ``payload`` for ``purpose`` as ``identity``; returns the wire bytes."""
    _check_purpose(purpose)
    ts = time.time() if timestamp is None else float(timestamp)
    body = _packb([VERSION, purpose, identity.public_key, ts, os.urandom(NONCE_BYTES), bytes(payload)])
    sig = identity.signing_key.sign(CONTEXT + body).signature
    return _packb([body, sig])


def seal_pairwise(
    keys: PairKeys, peer: bytes, payload: bytes, purpose: str, *, timestamp: float | None = None
) -> bytes:
    """Tag ``payload`` for ``purpose`` with the key ``keys.identity`` shares with ``peer`` (version 2).

    Only ``peer`` (and the sender) can check it; ValueError for a ``peer`` that is not a usable key.
    """
    _check_purpose(purpose)
    identity = keys.identity
    ts = time.time() if timestamp is None else float(timestamp)
    body = _packb([VERSION_PAIRWISE, purpose, identity.public_key, ts, os.urandom(NONCE_BYTES), bytes(payload)])
    return _packb([body, tag(keys.key_for(peer), CONTEXT + body)])


def _malformed(message: str) -> EnvelopeRejected:
    return EnvelopeRejected("malformed", message)


def _parse(data: bytes) -> tuple[Envelope, bytes]:
    """Parse wire bytes into an Envelope and the signed body; EnvelopeRejected("malformed")."""
    if type(data) is not bytes and not isinstance(data, bytearray | memoryview):
        raise _malformed(f"expected bytes, got {type(data).__name__}")
    try:
        outer = msgpack.unpackb(data, raw=False, use_list=False)
    except Exception as e:
        raise _malformed(f"not msgpack: {type(e).__name__}") from None
    if type(outer) is not tuple or len(outer) != 2:
        raise _malformed("expected [body, signature]")
    body, sig = outer
    if type(body) is not bytes or type(sig) is not bytes or len(sig) != SIGNATURE_BYTES:
        raise _malformed("body or signature has the wrong type or length")
    try:
        fields = msgpack.unpackb(body, raw=False, use_list=False)
    except Exception as e:
        raise _malformed(f"body is not msgpack: {type(e).__name__}") from None
    if type(fields) is not tuple or len(fields) != 6:
        raise _malformed("body must have 6 fields")
    version, purpose, pk, ts, nonce, payload = fields
    if type(version) is not int or version not in (VERSION, VERSION_PAIRWISE):
        raise _malformed(f"unsupported envelope version {version!r}")
    if type(purpose) is not str or not _PURPOSE_RE.match(purpose):
        raise _malformed("bad purpose field")
    if type(pk) is not bytes or len(pk) != PUBLIC_KEY_BYTES:
        raise _malformed("bad public key field")
    if type(ts) not in (float, int) or not math.isfinite(ts):
        raise _malformed("bad timestamp field")
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise _malformed("bad nonce field")
    if type(payload) is not bytes:
        raise _malformed("payload must be bytes")
    return Envelope(version, purpose, pk, float(ts), nonce, payload, sig), body


def open_envelope(data: bytes) -> Envelope:
    """Parse wire bytes without verifying anything; EnvelopeRejected("malformed") on bad input."""
    return _parse(data)[0]


_ID_PREFIXES: Final = frozenset(f"{p}-" for p in ROLE_PREFIX.values())


class Verifier:
    """Checks envelopes against a ``TrustStore``, a clock-skew window and a nonce cache.

    ``role`` (when set) is the role signers must be allowed in (``worker`` for
    presence, ``scheduler`` for dispatch, ``publisher`` for manifests), and the
    prefix an ``expect_node_id`` must carry. ``allow_all=True`` (``--insecure``)
    skips only the allowlist check; the denylist, signature, skew and replay
    checks still apply. ``fresh=False`` is for long-lived signatures (artifact
    manifests): no skew window and no nonce cache.
    """

    def __init__(
        self,
        allowed: Iterable[KeyLike] = (),
        denied: Iterable[KeyLike] = (),
        *,
        trust: TrustStore | None = None,
        role: str | None = None,
        skew_s: float = 30.0,
        allow_all: bool = False,
        max_nonces: int = 2_000_000,
        max_cached_keys: int = 10_000,
        fresh: bool = True,
        clock: Callable[[], float] = time.time,
        pair_keys: PairKeys | None = None,
    ) -> None:
        self.fresh = fresh
        #: The receiver's own pairwise keys: version-2 envelopes are accepted only with them.
        self.pair_keys = pair_keys
        self.trust = trust if trust is not None else TrustStore()
        for k in allowed:
            self.trust.add_allowed(k)
        for k in denied:
            self.trust.deny(k)
        if role is not None and role not in ROLE_PREFIX:
            raise ValueError(f"unknown role {role!r}")
        self.role = role
        self._id_prefixes = frozenset({f"{ROLE_PREFIX[role]}-"}) if role else _ID_PREFIXES
        self.skew_s = float(skew_s)
        self.allow_all = allow_all
        self.clock = clock
        self.nonces = NonceCache(max_nonces)
        self.rejections: Counter[str] = Counter()
        self.accepted = 0
        self._key_cache: dict[bytes, tuple[VerifyKey, str]] = {}
        self._max_cached_keys = max_cached_keys

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> Verifier:
        """A Verifier whose lists come from an allowlist file (see ``tether.trust``).

        Raises FileNotFoundError (unless ``missing_ok``) or ValueError for a bad file.
        """
        p = Path(path)
        if not missing_ok and not p.exists():
            raise FileNotFoundError(p)
        if p.exists():
            parse_allowlist(p.read_text(), source=str(p))  # a bad file is an error at start
        return cls(trust=TrustStore(p), **kwargs)

    # -- key lists (delegated to the trust store) --------------------------

    @property
    def path(self) -> Path | None:
        return self.trust.path

    def reload(self) -> bool:
        """Re-read the allowlist file if it changed; True when reloaded."""
        return self.trust.reload()

    def add_allowed(self, key: KeyLike) -> None:
        self.trust.add_allowed(key)

    def deny(self, key: KeyLike) -> None:
        self.trust.deny(key)

    @property
    def allowed(self) -> frozenset[bytes]:
        return self.trust.allowed

    @property
    def denied(self) -> frozenset[bytes]:
        return self.trust.denied

    # -- verification ------------------------------------------------------

    def reject(self, reason: str, message: str, signer: bytes | None = None) -> EnvelopeRejected:
        """Count a rejection by ``reason`` and return the error to raise."""
        self.rejections[reason] += 1
        err = EnvelopeRejected(reason, message)
        err.signer = signer
        return err

    def _cached_key(self, pk: bytes) -> tuple[VerifyKey, str]:
        """(VerifyKey, node-id hash suffix) for a public key, cached (bounded)."""
        entry = self._key_cache.get(pk)
        if entry is None:
            if len(self._key_cache) >= self._max_cached_keys:
                self._key_cache.clear()
            entry = self._key_cache[pk] = (VerifyKey(pk), worker_id_for(pk, "worker")[2:])
        return entry

    def verify(
        self,
        data: bytes,
        *,
        purpose: str,
        now: float | None = None,
        expect_node_id: str | None = None,
    ) -> Envelope:
        """Return the envelope if it is authentic, fresh, new and meant for ``purpose``.

        ``expect_node_id`` (e.g. the worker token of the subject) must be the signer's
        node id in the role its prefix names. Raises ``EnvelopeRejected`` (a
        ``SignatureInvalid``) with ``reason`` set, and counts it in ``rejections``.

        The same three stages run split when the signature check is done on
        other threads (``tether.presence_ingest``): ``prepare`` (cheap checks),
        ``signature_ok`` (thread-safe, releases the GIL), ``commit`` (nonce).
        """
        pending = self.prepare(data, purpose=purpose, now=now, expect_node_id=expect_node_id)
        return self.commit(pending, signature_ok(pending))

    def prepare(
        self,
        data: bytes,
        *,
        purpose: str,
        now: float | None = None,
        expect_node_id: str | None = None,
    ) -> Pending:
        """Every check but the signature and the nonce record; EnvelopeRejected (counted) on failure.

        A nonce already in the cache is rejected here as ``replayed`` without
        spending a signature check on it (a replay or a forgery: refused either way).
        """
        try:
            env, body = _parse(data)
        except EnvelopeRejected as e:
            self.rejections[e.reason] += 1
            raise
        try:
            return self._check(env, body, purpose, now, expect_node_id)
        except EnvelopeRejected as e:
            e.signer = env.public_key
            raise

    def commit(self, pending: Pending, signature_valid: bool) -> Envelope:
        """Finish ``pending`` given its signature check: record the nonce and count it accepted."""
        env = pending.envelope
        try:
            if not signature_valid:
                raise self.reject("bad_signature", "signature does not verify")
            if self.fresh:
                added = self.nonces.add(env.public_key + env.nonce, pending.expires_at, pending.now)
                if added is Added.REPLAYED:
                    raise self.reject("replayed", "nonce already seen")
                if added is Added.FULL:
                    raise self.reject(
                        "flood", "too many envelopes from this signer within the replay window; retry later"
                    )
        except EnvelopeRejected as e:
            e.signer = env.public_key
            raise
        self.accepted += 1
        return env

    def _check(
        self, env: Envelope, body: bytes, purpose: str, now: float | None, expect_node_id: str | None
    ) -> Pending:
        if env.purpose != purpose:
            raise self.reject("wrong_purpose", f"sealed for {env.purpose!r}, expected {purpose!r}")
        pk = env.public_key
        if self.trust.is_denied(pk):
            raise self.reject("denied_key", f"key {env.public_key_b64} is denylisted")
        if not self.allow_all and not self.trust.allows(pk, self.role):
            what = f" for role {self.role}" if self.role else ""
            raise self.reject("unknown_key", f"key {env.public_key_b64} is not allowlisted{what}")
        if now is None:
            now = self.clock()
        skew = self.skew_s
        ts = env.timestamp
        if not self.fresh:
            ts, now, skew = 0.0, 0.0, math.inf  # a long-lived signature: no window, no nonce
        if ts < now - skew:
            raise self.reject("stale", f"timestamp {now - ts:.1f}s old (skew window {skew:g}s)")
        if ts > now + skew:
            raise self.reject("stale", f"timestamp {ts - now:.1f}s in the future (skew window {skew:g}s)")
        vk, id_suffix = self._cached_key(pk)
        if expect_node_id is not None and (
            expect_node_id[2:] != id_suffix or expect_node_id[:2] not in self._id_prefixes
        ):
            raise self.reject("id_mismatch", f"node id {expect_node_id!r} does not belong to the signing key")
        if self.fresh and pk + env.nonce in self.nonces:
            raise self.reject("replayed", "nonce already seen")
        mac_key = None
        if env.version == VERSION_PAIRWISE:
            if self.pair_keys is None:
                raise self.reject("malformed", "a pairwise-tagged envelope is not accepted here (signatures only)")
            try:
                mac_key = self.pair_keys.key_for(pk)
            except ValueError as exc:
                raise self.reject("malformed", f"sender key: {exc}") from None
        return Pending(env, CONTEXT + body, vk, ts + skew, now, mac_key)


@dataclass(slots=True)
class Pending:
    """An envelope that passed every check but the signature (from ``Verifier.prepare``)."""

    envelope: Envelope
    signed: bytes  # CONTEXT + body: the bytes the signature covers
    key: VerifyKey
    expires_at: float  # when its nonce may be forgotten
    now: float
    mac_key: bytes | None = None  # a version-2 envelope: the pairwise key its tag is checked with


def signature_ok(pending: Pending) -> bool:
    """Does the signature (or a version-2 envelope's tag) verify? Pure and thread-safe; libsodium
    runs without the GIL."""
    if pending.mac_key is not None:
        return hmac.compare_digest(tag(pending.mac_key, pending.signed), pending.envelope.signature)
    try:
        pending.key.verify(pending.signed, pending.envelope.signature)
    except BadSignatureError:
        return False
    return True
