"""Create or update the declared streams and consumers (idempotent)."""

from __future__ import annotations

import logging
from dataclasses import replace

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

from streams.definitions import Topology

log = logging.getLogger(__name__)

#: nats-server: "subjects overlap with an existing stream".
SUBJECTS_OVERLAP = 10065


async def apply(js: JetStreamContext, topo: Topology, *, update: bool = False) -> None:
    """Create what is missing; with ``update``, also bring existing streams and consumers to ``topo``.

    Only the scheduler updates (its settings own the JOBS consumer's lease and delivery cap,
    and it is what an operator restarts to change them). Every other process (gateway,
    worker, CLI tools) only creates what is missing, so one started with a default
    setting cannot shrink RESULTS' retention or JOBS' message size under the others.
    """
    skipped: set[str] = set()
    for cfg in topo.streams:
        assert cfg.name is not None
        try:
            await js.stream_info(cfg.name)
        except NotFoundError:
            try:
                await js.add_stream(cfg)
            except BadRequestError as exc:
                if cfg.name not in topo.optional or exc.err_code != SUBJECTS_OVERLAP:
                    raise
                log.error(
                    "optional stream not created: another stream already captures its subjects",
                    extra={"stream": cfg.name, "subjects": cfg.subjects, "error": exc.description},
                )
                skipped.add(cfg.name)
                continue
            log.info("stream created", extra={"stream": cfg.name})
        else:
            if update:
                await js.update_stream(cfg)
    for stream, ccfg in topo.consumers:
        assert ccfg.durable_name is not None
        if stream in skipped:
            continue
        if not update:
            try:
                await js.consumer_info(stream, ccfg.durable_name)
                continue
            except NotFoundError:
                pass
        await js.add_consumer(stream, ccfg)  # creates, or updates a durable with the same name
    await apply_buckets(js, topo.key_values, update=update)
    for obj in topo.object_stores:
        assert obj.bucket is not None
        try:
            await js.object_store(obj.bucket)
        except BucketNotFoundError:
            await js.create_object_store(obj.bucket, config=obj)
            log.info("object store created", extra={"bucket": obj.bucket})
        else:
            if update:
                await _bring_up_to_date(js, f"OBJ_{obj.bucket}", obj)


async def apply_buckets(js: JetStreamContext, buckets: tuple[KeyValueConfig, ...], *, update: bool = False) -> None:
    """Create each KV bucket that is missing; with ``update``, bring existing ones to their declaration.

    A bucket is a stream (``KV_<bucket>``): its TTL, replicas and history are that stream's
    ``max_age``, ``num_replicas`` and ``max_msgs_per_subject``, updated in place like any stream.
    """
    for cfg in buckets:
        try:
            await js.key_value(cfg.bucket)
        except BucketNotFoundError:
            await js.create_key_value(cfg)
            log.info("kv bucket created", extra={"bucket": cfg.bucket})
        else:
            if update:
                await _bring_up_to_date(js, f"KV_{cfg.bucket}", cfg)


async def _bring_up_to_date(js: JetStreamContext, stream: str, cfg: KeyValueConfig | ObjectStoreConfig) -> None:
    """Update a bucket's stream where its TTL, replicas, size cap or history differ from ``cfg``."""
    current = (await js.stream_info(stream)).config
    wanted = replace(
        current,
        max_age=float(cfg.ttl or 0.0),
        num_replicas=cfg.replicas,
        max_bytes=cfg.max_bytes if cfg.max_bytes is not None else current.max_bytes,
        description=cfg.description if cfg.description is not None else current.description,
    )
    if isinstance(cfg, KeyValueConfig):
        wanted = replace(wanted, max_msgs_per_subject=cfg.history)
    if wanted.max_age and (current.duplicate_window or 0.0) > wanted.max_age:  # the server refuses a longer one
        wanted = replace(wanted, duplicate_window=wanted.max_age)
    if _differs(current, wanted):
        await js.update_stream(wanted)
        log.info("bucket updated", extra={"stream": stream, "ttl": wanted.max_age, "replicas": wanted.num_replicas})


def _differs(a: object, b: object) -> bool:
    fields = ("max_age", "num_replicas", "max_bytes", "description", "max_msgs_per_subject", "duplicate_window")
    return any(getattr(a, f) != getattr(b, f) for f in fields)
