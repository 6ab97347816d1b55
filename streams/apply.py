"""Create or update the declared streams and consumers (idempotent)."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
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
    for kv in topo.key_values:
        try:
            await js.key_value(kv.bucket)
        except BucketNotFoundError:
            await js.create_key_value(kv)
            log.info("kv bucket created", extra={"bucket": kv.bucket})
    for obj in topo.object_stores:
        assert obj.bucket is not None
        try:
            await js.object_store(obj.bucket)
        except BucketNotFoundError:
            await js.create_object_store(obj.bucket, config=obj)
            log.info("object store created", extra={"bucket": obj.bucket})
