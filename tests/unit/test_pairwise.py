"""Pairwise keys and version-2 (pairwise-tagged) envelopes: who can make them, who accepts them."""

from __future__ import annotations

import msgpack
import pytest

from tether.dispatch_auth import DispatchSigner, dispatch_purpose
from tether.envelope import (
    VERSION,
    VERSION_PAIRWISE,
    EnvelopeRejected,
    Verifier,
    open_envelope,
    seal_pairwise,
)
from tether.identity import Identity
from tether.pairwise import PairKeys, tag

NOW = 1_700_000_000.0


@pytest.fixture
def scheduler() -> Identity:
    return Identity.generate("scheduler")


@pytest.fixture
def worker() -> Identity:
    return Identity.generate("worker")


def gate(worker: Identity, *allowed: Identity) -> Verifier:
    return Verifier([a.public_key for a in allowed], role="scheduler", pair_keys=PairKeys(worker))


def rejected(v: Verifier, data: bytes, reason: str, purpose: str = "dispatch.w") -> None:
    with pytest.raises(EnvelopeRejected) as ei:
        v.verify(data, purpose=purpose, now=NOW)
    assert ei.value.reason == reason, ei.value


def test_both_sides_derive_the_same_key_and_a_third_party_another(scheduler: Identity, worker: Identity) -> None:
    k = PairKeys(scheduler).key_for(worker.public_key)
    assert k == PairKeys(worker).key_for(scheduler.public_key) and len(k) == 32
    third = Identity.generate("worker")
    assert PairKeys(third).key_for(scheduler.public_key) != k
    assert PairKeys(scheduler).key_for(third.public_key) != k


@pytest.mark.parametrize("peer", [b"", bytes(31), bytes(32), bytes([1]) + bytes(31), "x" * 32])
def test_a_key_that_is_not_a_usable_public_key_is_refused(scheduler: Identity, peer: object) -> None:
    with pytest.raises(ValueError):
        PairKeys(scheduler).key_for(peer)  # type: ignore[arg-type]


def test_the_tag_depends_on_key_and_message() -> None:
    assert tag(b"k" * 32, b"m") != tag(b"k" * 32, b"n") != tag(b"j" * 32, b"m")
    assert len(tag(b"k" * 32, b"m")) == 64


def test_a_pairwise_envelope_opens_for_its_receiver(scheduler: Identity, worker: Identity) -> None:
    data = seal_pairwise(PairKeys(scheduler), worker.public_key, b"payload", "dispatch.w", timestamp=NOW)
    env = gate(worker, scheduler).verify(data, purpose="dispatch.w", now=NOW)
    assert env.payload == b"payload" and env.version == VERSION_PAIRWISE and env.public_key == scheduler.public_key


def test_another_receiver_cannot_open_it(scheduler: Identity, worker: Identity) -> None:
    data = seal_pairwise(PairKeys(scheduler), worker.public_key, b"p", "dispatch.w", timestamp=NOW)
    rejected(gate(Identity.generate("worker"), scheduler), data, "bad_signature")


def test_a_changed_body_or_tag_is_refused(scheduler: Identity, worker: Identity) -> None:
    data = seal_pairwise(PairKeys(scheduler), worker.public_key, b"p", "dispatch.w", timestamp=NOW)
    body, t = msgpack.unpackb(data)
    fields = msgpack.unpackb(body)
    fields[5] = b"q"  # the payload
    rejected(gate(worker, scheduler), msgpack.packb([msgpack.packb(fields), t]), "bad_signature")
    rejected(gate(worker, scheduler), msgpack.packb([body, bytes([t[0] ^ 1]) + t[1:]]), "bad_signature")


def test_the_receiver_cannot_pass_off_its_own_tag_as_another_senders(scheduler: Identity, worker: Identity) -> None:
    """The tag binds the sender's key: a tag under the key shared with A does not verify as from B."""
    other = Identity.generate("scheduler")
    data = seal_pairwise(PairKeys(scheduler), worker.public_key, b"p", "dispatch.w", timestamp=NOW)
    body, t = msgpack.unpackb(data)
    fields = msgpack.unpackb(body)
    fields[2] = other.public_key  # claim another (allowed) sender
    rejected(gate(worker, scheduler, other), msgpack.packb([msgpack.packb(fields), t]), "bad_signature")


def test_trust_freshness_and_replay_apply_as_to_a_signature(scheduler: Identity, worker: Identity) -> None:
    keys = PairKeys(scheduler)
    data = seal_pairwise(keys, worker.public_key, b"p", "dispatch.w", timestamp=NOW)
    rejected(gate(worker), data, "unknown_key")  # not allowlisted
    denying = gate(worker, scheduler)
    denying.deny(scheduler.public_key)
    rejected(denying, data, "denied_key")
    rejected(gate(worker, scheduler), seal_pairwise(keys, worker.public_key, b"p", "dispatch.w", timestamp=NOW - 600),
             "stale")
    rejected(gate(worker, scheduler), data, "wrong_purpose", purpose="dispatch.other")
    v = gate(worker, scheduler)
    v.verify(data, purpose="dispatch.w", now=NOW)
    rejected(v, data, "replayed")


def test_a_verifier_without_pair_keys_takes_signatures_only(scheduler: Identity, worker: Identity) -> None:
    """Presence, model announcements and manifests are checked by many: a tag is refused there."""
    data = seal_pairwise(PairKeys(scheduler), worker.public_key, b"p", "dispatch.w", timestamp=NOW)
    rejected(Verifier([scheduler.public_key], role="scheduler"), data, "malformed")


def test_the_dispatch_signer_tags_when_it_knows_the_worker_key_and_signs_otherwise(
    scheduler: Identity, worker: Identity
) -> None:
    signer = DispatchSigner(scheduler)
    v = gate(worker, scheduler)
    tagged = signer.seal(worker.node_id, b"batch", worker.public_key)
    signed = signer.seal(worker.node_id, b"batch")
    fallback = signer.seal(worker.node_id, b"batch", bytes(32))  # not a usable key: signed instead
    assert [open_envelope(d).version for d in (tagged, signed, fallback)] == [VERSION_PAIRWISE, VERSION, VERSION]
    for data in (tagged, signed, fallback):
        assert v.verify(data, purpose=dispatch_purpose(worker.node_id)).payload == b"batch"
