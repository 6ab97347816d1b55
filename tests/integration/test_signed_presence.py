"""Signed presence over a real nats-server: one test per rejection path.

Each test publishes onto the real presence / model subjects and asserts the
rejection reason counted by the fleet view, and that the fleet view did not change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import msgpack
import pytest
import pytest_asyncio
from nats.aio.client import Client

from schemas import ModelAnnouncement, ModelState, Presence, ServedModel
from streams import TRUST_BUCKET, apply, topology
from tether import codec, subjects
from tether.envelope import CONTEXT, PURPOSE_MODEL, PURPOSE_PRESENCE, seal
from tether.fleet import FleetView
from tether.identity import Identity
from tether.security import ensure_dev_trust
from tether.settings import Settings
from tether.signed import envelope_headers, seal_message
from tether.trust import allowlist_line, append_allowlist, kv_key


def heartbeat(worker_id: str, seq: int = 1) -> Presence:
    return Presence(
        worker_id=worker_id,
        region="local",
        device_class="cpu:test",
        capacity=4,
        queue_depth=0,
        models=[ServedModel(model_id="echo", version="1", task="echo", state=ModelState.WARM)],
        heartbeat_s=0.5,
        started_at=1.0,
        seq=seq,
        ts=time.time(),
    )


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


class Harness:
    def __init__(self, nc: Client, fleet: FleetView, worker: Identity) -> None:
        self.nc, self.fleet, self.worker = nc, fleet, worker

    async def send(self, data: bytes, subject: str | None = None) -> None:
        await self.nc.publish(
            subject or subjects.presence_subject("local", self.worker.node_id),
            data,
            headers=envelope_headers(),
        )
        await self.nc.flush()

    async def rejected(self, data: bytes, reason: str, subject: str | None = None) -> None:
        """Publish ``data``; assert it is rejected for ``reason`` and the fleet view is unchanged."""
        before_view = {e.worker_id: (e.presence, e.last_seen) for e in self.fleet.workers()}
        before_models = set(self.fleet.models())
        before = self.fleet.rejections[reason]
        await self.send(data, subject)
        await until(lambda: self.fleet.rejections[reason] == before + 1)
        await asyncio.sleep(0.05)  # anything else it might have done has landed too
        assert {e.worker_id: (e.presence, e.last_seen) for e in self.fleet.workers()} == before_view
        assert set(self.fleet.models()) == before_models
        assert self.fleet.rejections[reason] == before + 1


@pytest_asyncio.fixture
async def harness(settings: Settings, nc: Client) -> AsyncIterator[Harness]:
    worker = ensure_dev_trust(settings)[0]
    await apply(nc.jetstream(), topology(settings))
    fleet = FleetView.from_settings(settings)
    await fleet.start(nc, nc.jetstream())
    try:
        yield Harness(nc, fleet, worker)
    finally:
        await fleet.stop()


async def test_signed_heartbeat_is_admitted(harness: Harness) -> None:
    await harness.send(seal_message(harness.worker, heartbeat(harness.worker.node_id), PURPOSE_PRESENCE))
    await until(lambda: harness.fleet.get(harness.worker.node_id) is not None)
    assert harness.fleet.candidates("echo", "1")[0].worker_id == harness.worker.node_id
    assert sum(harness.fleet.rejections.values()) == 0


async def test_unsigned_heartbeat_rejected(harness: Harness) -> None:
    plain = codec.encode(heartbeat(harness.worker.node_id).wire())
    await harness.rejected(plain, "malformed")


async def test_bad_signature_rejected(harness: Harness) -> None:
    good = seal_message(harness.worker, heartbeat(harness.worker.node_id), PURPOSE_PRESENCE)
    body, sig = msgpack.unpackb(good)
    await harness.rejected(msgpack.packb([body, bytes([sig[0] ^ 1]) + sig[1:]]), "bad_signature")
    # the same body with a payload that says something else, under the original signature
    fields = msgpack.unpackb(body)
    fields[5] = msgpack.packb({**heartbeat(harness.worker.node_id).wire(), "capacity": 9999})
    await harness.rejected(msgpack.packb([msgpack.packb(fields), sig]), "bad_signature")


async def test_unknown_key_rejected(harness: Harness) -> None:
    stranger = Identity.generate("worker")
    subject = subjects.presence_subject("local", stranger.node_id)
    await harness.rejected(
        seal_message(stranger, heartbeat(stranger.node_id), PURPOSE_PRESENCE), "unknown_key", subject
    )


async def test_allowlist_file_reloads_without_restart(harness: Harness, settings: Settings) -> None:
    newcomer = Identity.generate("worker")
    subject = subjects.presence_subject("local", newcomer.node_id)
    await harness.rejected(
        seal_message(newcomer, heartbeat(newcomer.node_id), PURPOSE_PRESENCE), "unknown_key", subject
    )
    append_allowlist(settings.allowlist_path, allowlist_line(newcomer.public_key, ["worker"]))
    await until(lambda: harness.fleet.gate.verifier.trust.allows(newcomer.public_key, "worker"), timeout=10)
    await harness.send(seal_message(newcomer, heartbeat(newcomer.node_id), PURPOSE_PRESENCE), subject)
    await until(lambda: harness.fleet.get(newcomer.node_id) is not None)


async def test_denylisted_key_rejected(harness: Harness, nc: Client) -> None:
    """Denied through the KV bucket while running: the allowlisted key is refused from then on."""
    kv = await nc.jetstream().key_value(TRUST_BUCKET)
    await kv.put(kv_key("deny", harness.worker.public_key), b"lost laptop")
    await until(lambda: harness.fleet.gate.verifier.trust.is_denied(harness.worker.public_key))
    data = seal_message(harness.worker, heartbeat(harness.worker.node_id), PURPOSE_PRESENCE)
    await harness.rejected(data, "denied_key")
    assert harness.fleet.get(harness.worker.node_id) is None


async def test_stale_timestamp_rejected(harness: Harness, settings: Settings) -> None:
    payload = msgpack.packb(heartbeat(harness.worker.node_id).wire())
    old = seal(harness.worker, payload, PURPOSE_PRESENCE, timestamp=time.time() - settings.skew_s - 5)
    await harness.rejected(old, "stale")
    future = seal(harness.worker, payload, PURPOSE_PRESENCE, timestamp=time.time() + settings.skew_s + 5)
    await harness.rejected(future, "stale")


async def test_replayed_nonce_rejected(harness: Harness) -> None:
    data = seal_message(harness.worker, heartbeat(harness.worker.node_id, seq=1), PURPOSE_PRESENCE)
    await harness.send(data)
    await until(lambda: harness.fleet.get(harness.worker.node_id) is not None)
    await harness.rejected(data, "replayed")


async def test_worker_id_not_matching_its_key_rejected(harness: Harness) -> None:
    victim = Identity.generate("worker")
    append_allowlist(
        harness.fleet.gate.verifier.trust.path,  # type: ignore[arg-type]
        allowlist_line(victim.public_key, ["worker"]),
    )
    harness.fleet.gate.verifier.trust.reload()
    # an allowlisted worker heartbeating on the victim's subject ...
    on_victim_subject = subjects.presence_subject("local", victim.node_id)
    data = seal_message(harness.worker, heartbeat(victim.node_id), PURPOSE_PRESENCE)
    await harness.rejected(data, "id_mismatch", on_victim_subject)
    # ... or on its own subject with the victim's id in the payload
    await harness.rejected(
        seal_message(harness.worker, heartbeat(victim.node_id), PURPOSE_PRESENCE), "id_mismatch"
    )
    assert harness.fleet.get(victim.node_id) is None


async def test_signature_without_context_rejected(harness: Harness) -> None:
    """The signer's key signed the body for some other use: not a Tether envelope signature."""
    good = seal_message(harness.worker, heartbeat(harness.worker.node_id), PURPOSE_PRESENCE)
    body, _ = msgpack.unpackb(good)
    assert not body.startswith(CONTEXT)
    await harness.rejected(msgpack.packb([body, harness.worker.sign(body)]), "bad_signature")


async def test_forged_model_announcement_rejected(harness: Harness) -> None:
    stranger = Identity.generate("worker")
    ann = ModelAnnouncement(
        worker_id=stranger.node_id,
        model_id="evil",
        version="1",
        region="local",
        task="generate",
        state=ModelState.WARM,
        ts=time.time(),
    )
    subject = subjects.model_subject("evil", "1", "local")
    await harness.rejected(seal_message(stranger, ann, PURPOSE_MODEL), "unknown_key", subject)
    # an allowlisted worker announcing in another worker's name
    ann_as_other = ann.model_copy(update={"worker_id": stranger.node_id})
    await harness.rejected(seal_message(harness.worker, ann_as_other, PURPOSE_MODEL), "id_mismatch", subject)
    # a heartbeat envelope replayed onto a model subject is sealed for the wrong purpose
    hb = seal_message(harness.worker, heartbeat(harness.worker.node_id), PURPOSE_PRESENCE)
    await harness.rejected(hb, "wrong_purpose", subject)
    assert not harness.fleet.knows_model("evil", "1")
    own = ann.model_copy(update={"worker_id": harness.worker.node_id})
    await harness.send(seal_message(harness.worker, own, PURPOSE_MODEL), subject)
    await until(lambda: harness.fleet.knows_model("evil", "1"))


@pytest.mark.parametrize("insecure", [False, True])
async def test_insecure_mode_trusts_any_key_but_still_verifies(
    settings: Settings, nc: Client, insecure: bool
) -> None:
    settings.insecure = insecure
    await apply(nc.jetstream(), topology(settings))
    fleet = FleetView.from_settings(settings)
    await fleet.start(nc, nc.jetstream())
    try:
        h = Harness(nc, fleet, Identity.generate("worker"))
        data = seal_message(h.worker, heartbeat(h.worker.node_id), PURPOSE_PRESENCE)
        if insecure:
            await h.send(data)
            await until(lambda: fleet.get(h.worker.node_id) is not None)
            await h.rejected(data, "replayed")
        else:
            await h.rejected(data, "unknown_key")
    finally:
        await fleet.stop()
