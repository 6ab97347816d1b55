"""A worker serves a model from a signed artifact only after verifying it; a bad one is reported
failed (with the reason) and never served, while the worker's other models keep serving."""

from __future__ import annotations

import os
from pathlib import Path

from nats.aio.client import Client

from streams import ARTIFACTS_BUCKET, apply, topology
from tests.conftest import start_system
from tests.tiny_models import build_tiny_gpt2
from tether import client
from tether.artifacts import build_manifest, file_object, publish
from tether.identity import Identity
from tether.security import ensure_dev_trust
from tether.settings import Settings
from tether.signed import read_unverified


async def publish_dir(
    nc: Client, directory: Path, publisher: Identity, model: str, runtime: str, task: str
) -> str:
    manifest = build_manifest(directory, model_id=model, version="1", runtime=runtime, task=task)
    return await publish(nc.jetstream(), ARTIFACTS_BUCKET, directory, manifest, publisher)


async def test_verified_artifact_served_tampered_one_refused(
    settings: Settings, nc: Client, tmp_path: Path
) -> None:
    publisher = ensure_dev_trust(settings)[2]
    await apply(nc.jetstream(), topology(settings))
    good_dir, evil_dir = tmp_path / "good", tmp_path / "evil"
    for d in (good_dir, evil_dir):
        d.mkdir()
        (d / "weights.bin").write_bytes(os.urandom(4096))
    good = await publish_dir(nc, good_dir, publisher, "good", "echo", "echo")
    evil = await publish_dir(nc, evil_dir, publisher, "evil", "echo", "echo")
    weights = build_manifest(evil_dir, model_id="evil", version="1", runtime="echo", task="echo").files[0]
    obs = await nc.jetstream().object_store(ARTIFACTS_BUCKET)
    await obs.put(file_object(weights.sha256), os.urandom(weights.size))  # tampered in the store

    announced: list[dict] = []

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        announced.append(read_unverified(msg.data))

    sub = await nc.subscribe("tether.models.>", cb=collect)
    system = await start_system(settings, ["echo", f"good:1=artifact:{good}", f"evil:1=artifact:{evil}"])
    try:
        worker = system.workers[0]
        bad = worker.slots[("evil", "1")]  # type: ignore[attr-defined]
        assert bad.state == "failed" and bad.runtime is None
        assert "artifact_invalid" in bad.detail or "tampered_file" in bad.detail, bad.detail
        assert worker.slots[("good", "1")].state == "warm"  # type: ignore[attr-defined]
        await nc.flush()
        failed = [a for a in announced if a["modelId"] == "evil" and a["state"] == "failed"]
        assert failed and "tampered_file" in failed[0]["detail"]
        assert system.scheduler.fleet.candidates("evil", "1") == []  # type: ignore[attr-defined]
        assert (await client.infer(nc, model="good", input="from a signed artifact"))["result"] == (
            "from a signed artifact"
        )
        assert (await client.infer(nc, model="echo", input="still serving"))["result"] == "still serving"
        cached = sorted(p.name for p in (settings.home / "artifacts").iterdir())
        assert cached == [good]  # only the verified artifact is on disk
    finally:
        await sub.unsubscribe()
        await system.close()


async def test_transformers_model_from_a_signed_artifact(
    settings: Settings, nc: Client, tmp_path: Path
) -> None:
    publisher = ensure_dev_trust(settings)[2]
    await apply(nc.jetstream(), topology(settings))
    digest = await publish_dir(
        nc, build_tiny_gpt2(tmp_path / "tiny"), publisher, "tiny", "transformers", "generate"
    )
    system = await start_system(settings, [f"tiny:1=artifact:{digest}"])
    try:
        slot = system.workers[0].slots[("tiny", "1")]  # type: ignore[attr-defined]
        assert slot.state == "warm", slot.detail
        assert slot.spec.source == f"artifact:{digest}"
        assert (
            settings.home / "artifacts" / digest / "manifest.signed"
        ).is_file()  # loaded from the verified copy
        reply = await client.infer(
            nc, model="tiny", input="the capital of france is", params={"maxNewTokens": 4}
        )
        assert reply["usage"]["tokensOut"] == 4 and isinstance(reply["result"], str)
    finally:
        await system.close()
