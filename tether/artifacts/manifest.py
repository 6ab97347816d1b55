"""Artifact manifests: what a model artifact contains, canonical bytes, digest, signature.

A manifest lists every file of a model directory (relative path, size,
SHA-256) with the model id, version, runtime kind and task. Its canonical form
is JSON with sorted keys and no spaces; the SHA-256 of those bytes (64 hex
characters) is the artifact's **address**. The publisher seals the canonical
bytes in an envelope for purpose ``manifest`` (tether/envelope.py); that signed
envelope is what the object store keeps.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from tether.envelope import PURPOSE_MANIFEST, EnvelopeRejected, Verifier, seal
from tether.errors import ArtifactInvalid
from tether.identity import Identity, encode_public_key

FORMAT: Final = 1
CHUNK: Final = 1 << 20
RUNTIME_KINDS: Final = ("transformers", "echo")


class ArtifactRejected(ArtifactInvalid):
    """An ``artifact_invalid`` error that says which check failed.

    ``reason``: ``missing``, ``malformed``, ``digest_mismatch``, ``bad_signature``,
    ``untrusted_publisher``, ``truncated``, ``tampered_file``, ``wrong_model``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"artifact rejected ({reason}): {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative, POSIX separators
    size: int
    sha256: str  # hex


@dataclass(frozen=True, slots=True)
class Manifest:
    model_id: str
    version: str
    runtime: str
    task: str
    files: tuple[FileEntry, ...]
    created_at: float

    def canonical(self) -> bytes:
        doc = {
            "format": FORMAT,
            "modelId": self.model_id,
            "version": self.version,
            "runtime": self.runtime,
            "task": self.task,
            "createdAt": self.created_at,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse canonical manifest bytes; ArtifactRejected("malformed") on anything odd."""
        try:
            doc: dict[str, Any] = json.loads(data)
            if doc.get("format") != FORMAT or doc.get("runtime") not in RUNTIME_KINDS:
                raise ValueError("unsupported format or runtime kind")
            files = tuple(
                FileEntry(safe_relpath(str(f["path"])), int(f["size"]), str(f["sha256"]))
                for f in doc["files"]
            )
            m = cls(
                str(doc["modelId"]),
                str(doc["version"]),
                doc["runtime"],
                str(doc["task"]),
                files,
                doc["createdAt"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactRejected("malformed", f"not a manifest: {e}") from None
        if m.canonical() != data:
            raise ArtifactRejected("malformed", "manifest is not in canonical form")
        return m


def safe_relpath(path: str) -> str:
    """``path`` if it is a plain relative path inside the artifact; ValueError otherwise."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or "\\" in path:
        raise ValueError(f"unsafe path in manifest: {path!r}")
    return str(p)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(directory: Path, *, model_id: str, version: str, runtime: str, task: str) -> Manifest:
    """Hash every regular file under ``directory`` (hidden files and links skipped) into a manifest."""
    if runtime not in RUNTIME_KINDS:
        raise ValueError(f"runtime kind must be one of {RUNTIME_KINDS}, got {runtime!r}")
    files = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_symlink() or not p.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        files.append(FileEntry(safe_relpath(rel), p.stat().st_size, file_sha256(p)))
    if not files:
        raise ValueError(f"no files to publish in {directory}")
    return Manifest(model_id, version, runtime, task, tuple(files), round(time.time(), 3))


def sign_manifest(manifest: Manifest, publisher: Identity) -> bytes:
    if publisher.role != "publisher":
        raise ValueError(f"manifests are signed with a publisher key, not a {publisher.role} key")
    return seal(publisher, manifest.canonical(), PURPOSE_MANIFEST)


def open_manifest(signed: bytes, digest: str, verifier: Verifier) -> tuple[Manifest, str]:
    """Verify a signed manifest against its address and the trusted publishers.

    Returns the manifest and the publisher's public key; ArtifactRejected says which check failed.
    """
    try:
        env = verifier.verify(signed, purpose=PURPOSE_MANIFEST)
    except EnvelopeRejected as e:
        reason = {"unknown_key": "untrusted_publisher", "denied_key": "untrusted_publisher"}.get(
            e.reason, "bad_signature" if e.reason == "bad_signature" else "malformed"
        )
        raise ArtifactRejected(reason, str(e)) from None
    if hashlib.sha256(env.payload).hexdigest() != digest:
        raise ArtifactRejected("digest_mismatch", f"manifest does not hash to its address {digest}")
    return Manifest.from_bytes(env.payload), encode_public_key(env.public_key)
