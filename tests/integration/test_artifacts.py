"""Signed model artifacts in a real JetStream object store: publish, fetch, verify, cache, refuse.

One test per refusal (tampered file, wrong signature, untrusted publisher, truncated download,
manifest under a wrong address, tampered cache); each asserts the reason and that the cache
holds nothing for the artifact afterwards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio
from nats.aio.client import Client

from services.worker.artifacts import artifact_cache
from streams import ARTIFACTS_BUCKET, TRUST_BUCKET, apply, topology
from tether.artifacts import (
    ArtifactCache,
    ArtifactRejected,
    build_manifest,
    file_object,
    manifest_object,
    publish,
)
from tether.artifacts.manifest import sign_manifest
from tether.artifacts.store import FILES_DIR
from tether.identity import Identity
from tether.security import ensure_dev_trust
from tether.settings import Settings
from tether.trust import allowlist_line, append_allowlist, kv_key


@dataclass
class Published:
    digest: str
    directory: Path
    settings: Settings
    nc: Client

    def cache(self) -> ArtifactCache:
        return artifact_cache(self.settings, self.nc.jetstream())

    async def put(self, name: str, data: bytes) -> None:
        obs = await self.nc.jetstream().object_store(ARTIFACTS_BUCKET)
        await obs.put(name, data)

    async def refused(self, reason: str) -> ArtifactRejected:
        with pytest.raises(ArtifactRejected) as ei:
            await self.cache().materialize(self.digest)
        assert ei.value.reason == reason, ei.value
        assert ei.value.code == "artifact_invalid"
        root = self.settings.home / "artifacts"
        leftovers = list(root.iterdir()) if root.exists() else []
        assert leftovers == []  # neither the artifact nor a partial download is left behind
        return ei.value


def model_dir(root: Path) -> Path:
    d = root / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"kind": "test"}')
    (d / "weights.bin").write_bytes(os.urandom(300_000))  # several object-store chunks
    (d / "sub" / "tokenizer.json").write_text("{}")
    (d / ".hidden").write_text("not published")
    return d


async def publish_dir(settings: Settings, nc: Client, directory: Path, publisher: Identity, **kw: str) -> str:
    manifest = build_manifest(
        directory,
        model_id=kw.get("model_id", "art"),
        version=kw.get("version", "1"),
        runtime=kw.get("runtime", "echo"),
        task=kw.get("task", "echo"),
    )
    return await publish(nc.jetstream(), ARTIFACTS_BUCKET, directory, manifest, publisher)


@pytest_asyncio.fixture
async def published(settings: Settings, nc: Client, tmp_path: Path) -> AsyncIterator[Published]:
    publisher = ensure_dev_trust(settings)[2]
    await apply(nc.jetstream(), topology(settings))
    directory = model_dir(tmp_path)
    yield Published(await publish_dir(settings, nc, directory, publisher), directory, settings, nc)


async def test_publish_fetch_verify_and_cache(published: Published) -> None:
    local, manifest = await published.cache().materialize(published.digest)
    assert manifest.digest == published.digest
    assert sorted(f.path for f in manifest.files) == ["config.json", "sub/tokenizer.json", "weights.bin"]
    for f in manifest.files:
        assert (local / FILES_DIR / f.path).read_bytes() == (published.directory / f.path).read_bytes()
    # cached: served (and re-verified) without the object store
    offline = ArtifactCache(local.parent, published.cache().verifier, None, ARTIFACTS_BUCKET)
    again, _ = await offline.materialize(published.digest)
    assert again == local


async def test_tampered_artifact_file_refused(published: Published) -> None:
    entry = next(
        f
        for f in build_manifest(
            published.directory, model_id="art", version="1", runtime="echo", task="echo"
        ).files
        if f.path == "weights.bin"
    )
    await published.put(file_object(entry.sha256), os.urandom(entry.size))
    err = await published.refused("tampered_file")
    assert "weights.bin" in err.message


async def test_publishing_again_repairs_a_damaged_file_object_of_the_same_size(
    published: Published, settings: Settings, nc: Client
) -> None:
    """An object replaced by other bytes of the same size is uploaded again, not taken as present."""
    data = (published.directory / "weights.bin").read_bytes()
    await published.put(file_object(hashlib.sha256(data).hexdigest()), os.urandom(len(data)))
    await published.refused("tampered_file")
    await publish_dir(settings, nc, published.directory, ensure_dev_trust(settings)[2])  # a new manifest, same files
    local, _ = await published.cache().materialize(published.digest)
    assert (local / FILES_DIR / "weights.bin").read_bytes() == data


async def test_truncated_download_refused(published: Published) -> None:
    data = (published.directory / "weights.bin").read_bytes()
    await published.put(file_object(hashlib.sha256(data).hexdigest()), data[: len(data) // 2])
    err = await published.refused("truncated")
    assert f"{len(data) // 2} of {len(data)} bytes" in err.message


async def test_wrong_manifest_signature_refused(published: Published) -> None:
    obs = await published.nc.jetstream().object_store(ARTIFACTS_BUCKET)
    signed = (await obs.get(manifest_object(published.digest))).data
    body, sig = msgpack.unpackb(signed)
    await published.put(
        manifest_object(published.digest), msgpack.packb([body, bytes([sig[0] ^ 1]) + sig[1:]])
    )
    await published.refused("bad_signature")


async def test_untrusted_publisher_refused(settings: Settings, nc: Client, tmp_path: Path) -> None:
    ensure_dev_trust(settings)
    await apply(nc.jetstream(), topology(settings))
    rogue = Identity.generate("publisher")
    p = Published(await publish_dir(settings, nc, model_dir(tmp_path), rogue), tmp_path, settings, nc)
    await p.refused("untrusted_publisher")
    # a key allowlisted as a worker is not trusted to publish
    worker = Identity.generate("worker")
    append_allowlist(settings.allowlist_path, allowlist_line(worker.public_key, ["worker"]))
    as_publisher = Identity.from_seed(bytes(worker.signing_key), "publisher")
    w = Published(
        await publish_dir(settings, nc, model_dir(tmp_path / "w"), as_publisher), tmp_path, settings, nc
    )
    await w.refused("untrusted_publisher")


async def test_denylisted_publisher_refused(published: Published) -> None:
    publisher = Identity.load(published.settings.keys_dir / "publisher.key")
    append_allowlist(published.settings.allowlist_path, f"deny {publisher.public_key_b64}\n")
    await published.refused("untrusted_publisher")


async def test_manifest_under_a_wrong_address_refused(published: Published, tmp_path: Path) -> None:
    publisher = Identity.load(published.settings.keys_dir / "publisher.key")
    other = build_manifest(
        model_dir(tmp_path / "other"), model_id="other", version="9", runtime="echo", task="echo"
    )
    await published.put(manifest_object(published.digest), sign_manifest(other, publisher))
    await published.refused("digest_mismatch")


async def test_missing_artifact_refused(published: Published) -> None:
    published.digest = "0" * 64
    await published.refused("missing")


async def test_cached_artifact_is_reverified_on_load(published: Published) -> None:
    local, _ = await published.cache().materialize(published.digest)
    weights = local / FILES_DIR / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF
    weights.write_bytes(bytes(data))
    offline = ArtifactCache(local.parent, published.cache().verifier, None, ARTIFACTS_BUCKET)
    with pytest.raises(ArtifactRejected) as ei:
        await offline.materialize(published.digest)
    assert ei.value.reason == "tampered_file"
    assert not local.exists()  # the bad cache entry is gone, never served


@pytest.mark.parametrize("planted", ["unlisted file", "symbolic link"])
async def test_a_cached_artifact_with_anything_besides_its_files_is_refused(published: Published, planted: str) -> None:
    local, _ = await published.cache().materialize(published.digest)
    if planted == "unlisted file":
        (local / FILES_DIR / "evil_remote_code.py").write_text("import os")
    else:
        weights = local / FILES_DIR / "weights.bin"
        outside = local.parent.parent / "outside.bin"
        outside.write_bytes(weights.read_bytes())  # same content for now; could change after the check
        weights.unlink()
        weights.symlink_to(outside)
    offline = ArtifactCache(local.parent, published.cache().verifier, None, ARTIFACTS_BUCKET)
    with pytest.raises(ArtifactRejected) as ei:
        await offline.materialize(published.digest)
    assert ei.value.reason == "tampered_file", ei.value
    assert not local.exists()


async def test_debris_where_the_artifact_goes_is_replaced_by_the_verified_download(published: Published) -> None:
    debris = published.settings.home / "artifacts" / published.digest
    (debris / FILES_DIR).mkdir(parents=True)
    (debris / FILES_DIR / "config.json").write_text('{"kind": "EVIL"}')  # no signed manifest
    local, _ = await published.cache().materialize(published.digest)
    assert (local / FILES_DIR / "config.json").read_text() == '{"kind": "test"}'
    assert sorted(p.name for p in local.iterdir()) == sorted([FILES_DIR, "manifest.signed"])


async def test_a_publisher_denied_in_the_trust_bucket_is_refused_by_a_worker(published: Published) -> None:
    from tether.security import open_trust, start_trust

    publisher = Identity.load(published.settings.keys_dir / "publisher.key")
    js = published.nc.jetstream()
    kv = await js.key_value(TRUST_BUCKET)
    await kv.put(kv_key("deny", publisher.public_key), b"compromised")
    trust = open_trust(published.settings)
    await start_trust(trust, js, published.settings)  # what the worker's dispatch gate runs
    try:
        with pytest.raises(ArtifactRejected) as ei:
            await artifact_cache(published.settings, js, trust=trust).materialize(published.digest)
        assert ei.value.reason == "untrusted_publisher", ei.value
    finally:
        await trust.stop()


def test_object_store_replicas_follow_the_cluster(settings: Settings) -> None:
    cluster = {"cluster": "c", "connect_urls": ["a:4222", "b:4222", "c:4222"]}
    assert topology(settings, cluster).object_stores[0].replicas == 3
    assert topology(settings, cluster).key_values[0].replicas == 3
    assert topology(settings).object_stores[0].replicas == 1
