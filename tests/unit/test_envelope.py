"""Signed envelopes: one test per rejection path, and the nonce cache."""

from __future__ import annotations

import os

import msgpack
import pytest

from tether import errors
from tether.envelope import (
    CONTEXT,
    REASONS,
    EnvelopeRejected,
    Verifier,
    open_envelope,
    seal,
)
from tether.identity import Identity
from tether.nonces import Added, NonceCache

NOW = 1_700_000_000.0


@pytest.fixture
def worker() -> Identity:
    return Identity.generate("worker")


@pytest.fixture
def verifier(worker: Identity) -> Verifier:
    return Verifier([worker.public_key], skew_s=30.0)


def reject(v: Verifier, data: bytes, reason: str, **kw: object) -> EnvelopeRejected:
    kw.setdefault("purpose", "presence")
    kw.setdefault("now", NOW)
    before = v.rejections[reason]
    with pytest.raises(EnvelopeRejected) as ei:
        v.verify(data, **kw)  # type: ignore[arg-type]
    assert ei.value.reason == reason
    assert isinstance(ei.value, errors.SignatureInvalid)
    assert ei.value.code == "signature_invalid"
    assert v.rejections[reason] == before + 1
    return ei.value


def resign(ident: Identity, body_fields: list[object]) -> bytes:
    body = msgpack.packb(body_fields, use_bin_type=True)
    return msgpack.packb([body, ident.sign(CONTEXT + body)], use_bin_type=True)


def test_roundtrip(worker: Identity, verifier: Verifier) -> None:
    data = seal(worker, b"hello", "presence", timestamp=NOW)
    env = verifier.verify(data, purpose="presence", now=NOW + 1, expect_node_id=worker.node_id)
    assert env.payload == b"hello"
    assert env.public_key == worker.public_key
    assert env.timestamp == NOW
    assert len(env.nonce) == 16
    assert env.node_id("worker") == worker.node_id
    assert verifier.accepted == 1 and sum(verifier.rejections.values()) == 0
    assert open_envelope(data) == env


def test_nonces_differ(worker: Identity) -> None:
    a = open_envelope(seal(worker, b"x", "presence"))
    b = open_envelope(seal(worker, b"x", "presence"))
    assert a.nonce != b.nonce


def test_bad_signature(worker: Identity, verifier: Verifier) -> None:
    body, sig = msgpack.unpackb(seal(worker, b"x", "presence", timestamp=NOW))
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    reject(verifier, msgpack.packb([body, forged]), "bad_signature")


def test_signature_without_context_rejected(worker: Identity, verifier: Verifier) -> None:
    body, _ = msgpack.unpackb(seal(worker, b"x", "presence", timestamp=NOW))
    reject(verifier, msgpack.packb([body, worker.sign(body)]), "bad_signature")


def test_tampered_payload(worker: Identity, verifier: Verifier) -> None:
    body, sig = msgpack.unpackb(seal(worker, b"load=0.1", "presence", timestamp=NOW))
    fields = msgpack.unpackb(body)
    fields[5] = b"load=0.9"
    reject(verifier, msgpack.packb([msgpack.packb(fields), sig]), "bad_signature")


def test_tampered_timestamp(worker: Identity, verifier: Verifier) -> None:
    body, sig = msgpack.unpackb(seal(worker, b"x", "presence", timestamp=NOW - 20))
    fields = msgpack.unpackb(body)
    fields[3] = NOW
    reject(verifier, msgpack.packb([msgpack.packb(fields), sig]), "bad_signature")


def test_key_substitution(worker: Identity, verifier: Verifier) -> None:
    """Signed by an unknown key but claiming an allowlisted one."""
    mallory = Identity.generate("worker")
    body, _ = msgpack.unpackb(seal(worker, b"x", "presence", timestamp=NOW))
    reject(verifier, msgpack.packb([body, mallory.sign(CONTEXT + body)]), "bad_signature")


def test_unknown_key(verifier: Verifier) -> None:
    stranger = Identity.generate("worker")
    reject(verifier, seal(stranger, b"x", "presence", timestamp=NOW), "unknown_key")


def test_denylisted_key(worker: Identity, verifier: Verifier) -> None:
    verifier.deny(worker.public_key_b64)
    err = reject(verifier, seal(worker, b"x", "presence", timestamp=NOW), "denied_key")
    assert worker.public_key_b64 in str(err)
    verifier.add_allowed(worker.public_key)  # deny wins over allow
    reject(verifier, seal(worker, b"x", "presence", timestamp=NOW), "denied_key")


def test_denylist_applies_in_allow_all_mode(worker: Identity) -> None:
    v = Verifier(allow_all=True, denied=[worker.public_key])
    reject(v, seal(worker, b"x", "presence", timestamp=NOW), "denied_key")


def test_allow_all_skips_only_allowlist() -> None:
    v = Verifier(allow_all=True)
    stranger = Identity.generate("worker")
    data = seal(stranger, b"x", "presence", timestamp=NOW)
    assert v.verify(data, purpose="presence", now=NOW).payload == b"x"
    reject(v, data, "replayed")
    reject(v, seal(stranger, b"x", "presence", timestamp=NOW - 31), "stale")
    body, _ = msgpack.unpackb(seal(stranger, b"x", "presence", timestamp=NOW))
    reject(v, msgpack.packb([body, bytes(64)]), "bad_signature")


def test_stale_timestamp(worker: Identity, verifier: Verifier) -> None:
    reject(verifier, seal(worker, b"x", "presence", timestamp=NOW - 30.5), "stale")
    ok = seal(worker, b"x", "presence", timestamp=NOW - 29.5)
    assert verifier.verify(ok, purpose="presence", now=NOW).payload == b"x"


def test_future_timestamp_beyond_skew(worker: Identity, verifier: Verifier) -> None:
    err = reject(verifier, seal(worker, b"x", "presence", timestamp=NOW + 31), "stale")
    assert "future" in str(err)
    ok = seal(worker, b"x", "presence", timestamp=NOW + 29)
    assert verifier.verify(ok, purpose="presence", now=NOW).payload == b"x"


def test_non_finite_timestamp_is_malformed(worker: Identity, verifier: Verifier) -> None:
    for bad in (float("nan"), float("inf")):
        data = resign(worker, [1, "presence", worker.public_key, bad, os.urandom(16), b"x"])
        reject(verifier, data, "malformed")


def test_replayed_nonce(worker: Identity, verifier: Verifier) -> None:
    data = seal(worker, b"x", "presence", timestamp=NOW)
    verifier.verify(data, purpose="presence", now=NOW)
    reject(verifier, data, "replayed", now=NOW + 5)


def test_forged_copy_does_not_burn_nonce(worker: Identity, verifier: Verifier) -> None:
    """A bad-signature message carrying a nonce must not block the genuine one."""
    data = seal(worker, b"x", "presence", timestamp=NOW)
    body, _ = msgpack.unpackb(data)
    reject(verifier, msgpack.packb([body, bytes(64)]), "bad_signature")
    assert verifier.verify(data, purpose="presence", now=NOW).payload == b"x"


def test_wrong_purpose(worker: Identity, verifier: Verifier) -> None:
    data = seal(worker, b"x", "dispatch", timestamp=NOW)
    reject(verifier, data, "wrong_purpose", purpose="presence")
    # the rejected attempt did not consume the nonce
    assert verifier.verify(data, purpose="dispatch", now=NOW).purpose == "dispatch"


def test_seal_rejects_bad_purpose(worker: Identity) -> None:
    with pytest.raises(ValueError):
        seal(worker, b"x", "Bad Purpose")


def test_id_mismatch(worker: Identity, verifier: Verifier) -> None:
    other = Identity.generate("worker")
    data = seal(worker, b"x", "presence", timestamp=NOW)
    reject(verifier, data, "id_mismatch", expect_node_id=other.node_id)
    reject(verifier, data, "id_mismatch", expect_node_id="w-" + "0" * 16)
    reject(verifier, data, "id_mismatch", expect_node_id="worker-1")
    # unknown role letter with the right hash
    reject(verifier, data, "id_mismatch", expect_node_id="x" + worker.node_id[1:])
    assert verifier.verify(data, purpose="presence", now=NOW, expect_node_id=worker.node_id)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        msgpack.packb({"a": 1}),
        msgpack.packb([b"x"]),
        msgpack.packb([b"body", b"short-sig"]),
        msgpack.packb(["body-as-str", bytes(64)]),
        msgpack.packb([msgpack.packb([1, "presence"]), bytes(64)]),
        msgpack.packb([b"\xc1\xc1", bytes(64)]),
    ],
)
def test_malformed_bytes(verifier: Verifier, data: bytes) -> None:
    reject(verifier, data, "malformed")
    with pytest.raises(errors.SignatureInvalid):
        open_envelope(data)


def test_malformed_not_bytes(verifier: Verifier) -> None:
    reject(verifier, "a string", "malformed")  # type: ignore[arg-type]


def test_truncated(worker: Identity, verifier: Verifier) -> None:
    data = seal(worker, b"x" * 300, "presence", timestamp=NOW)
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        reject(verifier, data[:cut], "malformed")
    reject(verifier, data + b"\x00", "malformed")  # trailing garbage


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f.__setitem__(0, 2),  # version
        lambda f: f.__setitem__(2, b"\x00" * 31),  # key length
        lambda f: f.__setitem__(3, "now"),  # timestamp type
        lambda f: f.__setitem__(4, b"\x00" * 8),  # nonce length
        lambda f: f.__setitem__(5, "text"),  # payload type
        lambda f: f.append(b"extra"),
    ],
)
def test_malformed_fields_even_when_signed(worker: Identity, verifier: Verifier, mutate: object) -> None:
    fields: list[object] = [1, "presence", worker.public_key, NOW, os.urandom(16), b"x"]
    mutate(fields)  # type: ignore[operator]
    reject(verifier, resign(worker, fields), "malformed")


def test_rejection_counter_covers_all_reasons() -> None:
    assert set(REASONS) == {
        "malformed",
        "bad_signature",
        "unknown_key",
        "denied_key",
        "stale",
        "replayed",
        "wrong_purpose",
        "id_mismatch",
        "flood",
    }


def test_error_travels_as_signature_invalid(worker: Identity, verifier: Verifier) -> None:
    err = reject(verifier, seal(worker, b"x", "presence", timestamp=NOW - 100), "stale")
    wire = err.to_wire()
    assert wire["code"] == "signature_invalid" and wire["retryable"] is False
    assert isinstance(errors.error_from_wire(wire), errors.SignatureInvalid)


# -- nonce cache ---------------------------------------------------------------


def test_nonce_cache_expires_old_nonces(worker: Identity) -> None:
    v = Verifier([worker.public_key], skew_s=30.0)
    for i in range(100):
        v.verify(seal(worker, b"x", "presence", timestamp=NOW + i * 0.1), purpose="presence", now=NOW)
    assert len(v.nonces) == 100
    # 61 s later every one of them is outside the window: stale, and forgotten
    v.verify(seal(worker, b"y", "presence", timestamp=NOW + 61), purpose="presence", now=NOW + 61)
    assert len(v.nonces) == 1


def test_nonce_cache_bounded_under_steady_traffic(worker: Identity) -> None:
    v = Verifier([worker.public_key], skew_s=2.0)
    msgs = [seal(worker, b"x", "presence", timestamp=NOW + i * 0.01) for i in range(2000)]
    peak = 0
    for i, m in enumerate(msgs):
        v.verify(m, purpose="presence", now=NOW + i * 0.01)
        peak = max(peak, len(v.nonces))
    # 100 msg/s for 20 s with a 2 s window keeps ~2-4 s of nonces, not all 2000
    assert peak <= 401
    assert len(v.nonces) < 2000


def test_nonce_cache_fails_closed_when_full() -> None:
    """No live nonce is ever forgotten to make room: past the caps new keys are refused instead."""
    c = NonceCache(max_entries=4, max_per_signer=2)
    a, b, d = b"A" * 32, b"B" * 32, b"D" * 32
    assert c.add(a + b"1", 100.0, 0.0) is Added.RECORDED
    assert c.add(a + b"2", 100.0, 0.0) is Added.RECORDED
    assert c.add(a + b"3", 100.0, 0.0) is Added.FULL  # A's share is used up; B is unaffected
    assert c.add(b + b"1", 100.0, 0.0) is Added.RECORDED
    assert c.add(b + b"2", 100.0, 0.0) is Added.RECORDED
    assert c.add(d + b"1", 100.0, 0.0) is Added.FULL  # the whole cache is full
    assert c.refused == 2 and len(c) == 4
    for key in (a + b"1", a + b"2", b + b"1", b + b"2"):  # every live nonce still refuses its replay
        assert c.add(key, 100.0, 0.0) is Added.REPLAYED
    assert c.add(a + b"3", 200.0, 101.0) is Added.RECORDED  # room again once entries expire
    assert c.held_by(a) == 1 and c.held_by(b) == 0


def test_flooding_signer_is_refused_without_opening_a_replay(worker: Identity) -> None:
    other = Identity.generate("worker")
    v = Verifier([worker.public_key, other.public_key], skew_s=30.0, max_nonces=8)
    first = seal(worker, b"p", "presence", timestamp=NOW)
    v.verify(first, purpose="presence", now=NOW)
    v.verify(seal(worker, b"p", "presence", timestamp=NOW), purpose="presence", now=NOW)
    reject(v, seal(worker, b"p", "presence", timestamp=NOW), "flood")  # its share (8 // 4 = 2) is used up
    v.verify(seal(other, b"p", "presence", timestamp=NOW), purpose="presence", now=NOW)  # others still pass
    reject(v, first, "replayed")  # and the flood did not make room for a replay


def test_an_entry_expiring_late_does_not_hold_back_the_others() -> None:
    """Expiry goes by time, not arrival: one envelope timestamped ahead keeps no one else's nonces alive."""
    c = NonceCache(max_entries=100, max_per_signer=10)
    a, b = b"A" * 32, b"B" * 32
    assert c.add(a + b"ahead", 60.0, 0.0) is Added.RECORDED
    for i in range(10):
        assert c.add(b + bytes([i]), 30.0, 0.0) is Added.RECORDED
    assert c.add(b + b"next", 65.0, 35.0) is Added.RECORDED  # B's ten expired at 30, A's is still live
    assert c.held_by(b) == 1 and c.held_by(a) == 1 and len(c) == 2


def test_nonce_cache_keyed_by_signer() -> None:
    c = NonceCache()
    assert c.add(b"A" * 32 + b"n" * 16, 10.0, 0.0) is Added.RECORDED
    assert c.add(b"B" * 32 + b"n" * 16, 10.0, 0.0) is Added.RECORDED
    assert c.add(b"A" * 32 + b"n" * 16, 10.0, 1.0) is Added.REPLAYED
    assert c.add(b"A" * 32 + b"n" * 16, 20.0, 11.0) is Added.RECORDED  # expired, forgotten
