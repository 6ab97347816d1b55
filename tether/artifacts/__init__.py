"""Signed, content-addressed model artifacts (manifest + files) in the JetStream object store."""

from tether.artifacts.manifest import ArtifactRejected, FileEntry, Manifest, build_manifest, open_manifest
from tether.artifacts.store import ArtifactCache, file_object, manifest_object, publish

__all__ = [
    "ArtifactCache",
    "ArtifactRejected",
    "FileEntry",
    "Manifest",
    "build_manifest",
    "file_object",
    "manifest_object",
    "open_manifest",
    "publish",
]
