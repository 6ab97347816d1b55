"""``tether models``: publish a model directory as a signed artifact, or fetch and verify one.

    tether models publish DIR --model ID --version V [--runtime transformers|echo] [--task T] [--key PATH]
    tether models verify DIGEST

``publish`` hashes every file (SHA-256), writes the manifest, signs it with the
publisher key (default ``TETHER_HOME/keys/publisher.key``), uploads files and
manifest to the ``TETHER_ARTIFACTS`` object store with a progress bar, and
prints the manifest digest: the artifact's address, which a worker names in a
model spec as ``ID:V=artifact:<digest>``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tether.settings import Settings


async def _publish(args: argparse.Namespace, s: Settings) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from streams import ARTIFACTS_BUCKET, apply, artifacts_only, topology
    from tether.artifacts import build_manifest, publish
    from tether.connection import connect
    from tether.identity import Identity

    publisher = Identity.load(Path(args.key) if args.key else s.keys_dir / "publisher.key")
    directory = Path(args.directory)
    manifest = await asyncio.to_thread(
        build_manifest,
        directory,
        model_id=args.model,
        version=args.version,
        runtime=args.runtime,
        task=args.task,
    )
    nc = await connect(s.url, name="tether-models", max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        await apply(js, artifacts_only(topology(s, nc._server_info)))
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=None, transient=False) as bar:
            task = bar.add_task(f"{args.model}:{args.version}", total=manifest.total_bytes)
            digest = await publish(
                js, ARTIFACTS_BUCKET, directory, manifest, publisher, progress=lambda n: bar.advance(task, n)
            )
    finally:
        await nc.close()
    print(
        f"published {args.model}:{args.version} ({len(manifest.files)} files, {manifest.total_bytes} bytes)"
    )
    print(f"digest {digest}")
    print(f"serve it with: TETHER_MODELS='{args.model}:{args.version}=artifact:{digest}' tether worker")
    return 0


async def _verify(args: argparse.Namespace, s: Settings) -> int:
    from services.worker.artifacts import artifact_cache
    from streams import apply, topology
    from tether.artifacts import ArtifactRejected
    from tether.connection import connect

    nc = await connect(s.url, name="tether-models", max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        await apply(js, topology(s, nc._server_info))
        try:
            directory, manifest = await artifact_cache(s, js).materialize(args.digest)
        except ArtifactRejected as e:
            print(f"error [{e.code}] {e.message}", file=sys.stderr)
            return 1
    finally:
        await nc.close()
    print(
        f"verified {manifest.model_id}:{manifest.version} ({manifest.runtime}, {manifest.task}) in {directory}"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser("models", help="signed model artifacts in the object store")
    msub = m.add_subparsers(dest="models_cmd", required=True, metavar="SUBCOMMAND")
    p = msub.add_parser("publish", help="hash, sign and upload a model directory")
    p.add_argument("directory")
    p.add_argument("--model", required=True, help="model id")
    p.add_argument("--version", required=True, help="model version")
    p.add_argument("--runtime", default="transformers", choices=("transformers", "echo"), help="runtime kind")
    p.add_argument("--task", default="generate", choices=("generate", "embed", "echo"), help="what it does")
    p.add_argument("--key", help="publisher key file (default TETHER_HOME/keys/publisher.key)")
    p.set_defaults(models_fn=_publish)
    v = msub.add_parser("verify", help="fetch an artifact by digest into the local cache and verify it")
    v.add_argument("digest")
    v.set_defaults(models_fn=_verify)
    m.set_defaults(fn=lambda args: asyncio.run(args.models_fn(args, Settings.from_env())))
