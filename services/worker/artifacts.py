"""Model specs that name a signed artifact: ``my-model:2=artifact:<manifest digest>[;options]``.

Before such a model is loaded, the worker fetches the artifact by digest from
the object store (or its local cache), verifies the manifest signature against
trusted publisher keys and every file's SHA-256, and only then builds the
runtime from the verified directory. A refusal raises ``ArtifactRejected``
(code ``artifact_invalid``) naming the failed check; the worker announces the
model ``failed`` with that message and never serves it.
"""

from __future__ import annotations

from dataclasses import replace

from nats.js import JetStreamContext

from services.worker.runtimes.base import Task
from services.worker.runtimes.catalog import ModelSpec
from streams import ARTIFACTS_BUCKET
from tether.artifacts import ArtifactCache, ArtifactRejected
from tether.artifacts.store import FILES_DIR
from tether.envelope import Verifier
from tether.security import open_trust
from tether.settings import Settings
from tether.trust import TrustStore

PREFIX = "artifact:"


def artifact_digest(spec: ModelSpec) -> str | None:
    return spec.source[len(PREFIX) :] if spec.source.startswith(PREFIX) else None


def artifact_cache(
    settings: Settings, js: JetStreamContext | None, trust: TrustStore | None = None
) -> ArtifactCache:
    """The worker's cache under ``TETHER_HOME/artifacts``, trusting publisher keys.

    ``trust`` is a started trust store (the worker passes its own, which follows the allowlist
    file and the ``TETHER_TRUST`` bucket, so a publisher denied there is refused at the next
    load); without one, only the allowlist file is read.
    """
    verifier = Verifier(
        trust=trust if trust is not None else open_trust(settings),
        role="publisher",
        allow_all=settings.insecure,
        fresh=False,
    )
    return ArtifactCache(settings.home / "artifacts", verifier, js, ARTIFACTS_BUCKET)


async def resolve(spec: ModelSpec, cache: ArtifactCache) -> ModelSpec:
    """``spec`` itself, or for an artifact spec the same spec pointing at the verified local copy."""
    digest = artifact_digest(spec)
    if digest is None:
        return spec
    directory, manifest = await cache.materialize(digest)
    if (manifest.model_id, manifest.version) != (spec.model_id, spec.version):
        raise ArtifactRejected(
            "wrong_model",
            f"artifact {digest} is {manifest.model_id}:{manifest.version}, not {spec.model_id}:{spec.version}",
        )
    try:
        task = Task(manifest.task)
    except ValueError:
        raise ArtifactRejected("malformed", f"unknown task {manifest.task!r} in the manifest") from None
    runtime = "echo" if manifest.runtime == "echo" else "transformers"
    return replace(spec, source=str(directory / FILES_DIR), task=task, runtime=runtime)
