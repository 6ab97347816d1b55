"""Model artifacts in the JetStream object store: publish, fetch by digest, verify, cache.

Object names in the ``TETHER_ARTIFACTS`` bucket:

- ``manifests/<digest>``: the signed manifest envelope (tether/artifacts/manifest.py)
- ``files/<sha256>``: one file's bytes, content-addressed (shared across versions)

``ArtifactCache.materialize(digest)`` returns a local directory holding the
verified files. A fresh download goes to a private temporary directory and is
renamed into ``<root>/<digest>`` only after the manifest signature (trusted
publisher), the manifest digest and every file's size and SHA-256 check out. A
cached artifact is re-verified (signature and every file) before each use; a
cache entry that fails is deleted. Nothing half-verified is ever returned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import DigestMismatchError, NotFoundError, ObjectNotFoundError

from tether.artifacts.manifest import (
    ArtifactRejected,
    FileEntry,
    Manifest,
    file_sha256,
    open_manifest,
    sign_manifest,
)
from tether.envelope import Verifier
from tether.identity import Identity

SIGNED_MANIFEST = "manifest.signed"
FILES_DIR = "files"
Progress = Callable[[int], None]  # called with bytes done since the last call


def claims_content(object_digest: str | None, sha256_hex: str) -> bool:
    """Whether an object's digest field (``SHA-256=`` + URL-safe base64) names content with this SHA-256."""
    algorithm, _, value = (object_digest or "").partition("=")
    if algorithm.upper() != "SHA-256" or not value:
        return False
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)) == bytes.fromhex(sha256_hex)
    except ValueError:
        return False


def manifest_object(digest: str) -> str:
    return f"manifests/{digest}"


def file_object(sha256: str) -> str:
    return f"files/{sha256}"


class _CountingReader(io.RawIOBase):
    """A file reader that reports progress as the object store reads it (from its thread)."""

    def __init__(self, path: Path, progress: Progress | None) -> None:
        self._f = path.open("rb")
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(buffer)
        if n and self._progress is not None:
            self._progress(n)
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


async def publish(
    js: JetStreamContext,
    bucket: str,
    directory: Path,
    manifest: Manifest,
    publisher: Identity,
    *,
    progress: Progress | None = None,
) -> str:
    """Upload every file (skipping ones the store already holds) and the signed manifest; the digest."""
    obs = await js.object_store(bucket)
    for entry in manifest.files:
        name = file_object(entry.sha256)
        with contextlib.suppress(ObjectNotFoundError, NotFoundError):
            info = await obs.get_info(name)
            # Skipped only when the stored object claims this very content: one replaced by other bytes
            # (a damaged or tampered upload, which workers refuse) is uploaded again, not kept.
            if info.size == entry.size and claims_content(info.digest, entry.sha256):
                if progress is not None:
                    progress(entry.size)
                continue
        reader = _CountingReader(directory / entry.path, progress)
        try:
            await obs.put(name, reader)  # type: ignore[arg-type]
        finally:
            reader.close()
    await obs.put(manifest_object(manifest.digest), sign_manifest(manifest, publisher))
    return manifest.digest


class ArtifactCache:
    """Verified artifacts on local disk under ``root``, fetched from the object store on a miss."""

    def __init__(self, root: Path, verifier: Verifier, js: JetStreamContext | None, bucket: str) -> None:
        self.root = root
        self.verifier = verifier
        self.js = js
        self.bucket = bucket

    async def materialize(self, digest: str) -> tuple[Path, Manifest]:
        """The verified local directory for ``digest`` and its manifest; ArtifactRejected otherwise."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ArtifactRejected("malformed", f"not an artifact digest: {digest!r}")
        final = self.root / digest
        if (final / SIGNED_MANIFEST).is_file():
            try:
                return final, await asyncio.to_thread(self._verify_dir, final, digest)
            except ArtifactRejected:
                shutil.rmtree(final, ignore_errors=True)  # never served again from a bad cache entry
                raise
        return final, await self._download(digest, final)

    def _verify_dir(self, directory: Path, digest: str) -> Manifest:
        """The manifest of a cached artifact whose files are exactly the manifest's, unchanged.

        Anything else in its files (a file the manifest does not list, a symbolic link) makes
        it tampered: a runtime could pick up an unlisted file, or a link's target could change.
        """
        manifest, _ = open_manifest((directory / SIGNED_MANIFEST).read_bytes(), digest, self.verifier)
        listed = {entry.path for entry in manifest.files}
        files = directory / FILES_DIR
        for root, dirs, names in os.walk(files):
            for name in (*dirs, *names):
                path = Path(root) / name
                rel = path.relative_to(files).as_posix()
                if path.is_symlink():
                    raise ArtifactRejected("tampered_file", f"{rel}: a symbolic link in the artifact")
                if name in names and rel not in listed:
                    raise ArtifactRejected("tampered_file", f"{rel}: not in the manifest")
        for entry in manifest.files:
            verify_file(files / entry.path, entry)
        return manifest

    async def _download(self, digest: str, final: Path) -> Manifest:
        if self.js is None:
            raise ArtifactRejected(
                "missing", f"artifact {digest} is not cached and no object store is connected"
            )
        obs = await self.js.object_store(self.bucket)
        signed = await _get(obs, manifest_object(digest), digest)
        manifest, _ = open_manifest(signed, digest, self.verifier)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=self.root))
        try:
            for entry in manifest.files:
                path = tmp / FILES_DIR / entry.path
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as f:
                    try:
                        await obs.get(file_object(entry.sha256), writeinto=f)  # type: ignore[arg-type]
                    except (ObjectNotFoundError, NotFoundError):
                        raise ArtifactRejected("missing", f"{entry.path}: not in the object store") from None
                    except DigestMismatchError:
                        raise ArtifactRejected(
                            "tampered_file", f"{entry.path}: chunks do not match"
                        ) from None
                await asyncio.to_thread(verify_file, path, entry)
            (tmp / SIGNED_MANIFEST).write_bytes(signed)
            try:
                os.replace(tmp, final)
            except OSError:  # something is there already: a concurrent fetch's copy, or debris
                try:
                    return await asyncio.to_thread(self._verify_dir, final, digest)
                except (ArtifactRejected, OSError):  # never served unverified: replace it with ours
                    await asyncio.to_thread(_replace, tmp, final)
            return manifest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _replace(new: Path, old: Path) -> None:
    """Put directory ``new`` where ``old`` is (a directory, a file or a link)."""
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)
    os.replace(new, old)


def verify_file(path: Path, entry: FileEntry) -> None:
    """The file has the manifest's size and SHA-256; ArtifactRejected says what is wrong otherwise."""
    if path.is_symlink():
        raise ArtifactRejected("tampered_file", f"{entry.path}: a symbolic link in the artifact")
    if not path.is_file():
        raise ArtifactRejected("missing", f"{entry.path}: not in the artifact")
    size = path.stat().st_size
    if size < entry.size:
        raise ArtifactRejected("truncated", f"{entry.path}: {size} of {entry.size} bytes")
    if size > entry.size:
        raise ArtifactRejected("tampered_file", f"{entry.path}: {size} bytes, the manifest says {entry.size}")
    if file_sha256(path) != entry.sha256:
        raise ArtifactRejected("tampered_file", f"{entry.path}: SHA-256 differs from the manifest")


async def _get(obs: object, name: str, digest: str) -> bytes:
    try:
        result = await obs.get(name)  # type: ignore[attr-defined]
    except (ObjectNotFoundError, NotFoundError):
        raise ArtifactRejected("missing", f"no artifact {digest} in the object store") from None
    return bytes(result.data or b"")
