"""Create or update the declared streams and consumers (idempotent)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
)
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from streams.definitions import Topology

log = logging.getLogger(__name__)

#: nats-server: "subjects overlap with an existing stream".
SUBJECTS_OVERLAP = 10065
#: nats-server's answers while a cluster forms or elects its JetStream leaders: "no suitable peers
#: for placement", "JetStream system temporarily unavailable", "cluster can not handle request".
SETTLING_ERR_CODES = frozenset({10005, 10008, 10009})
#: How long a starting role waits for JetStream to settle before it gives up.
SETTLE_S = 60.0
#: "JetStream not enabled for account", "JetStream not enabled": no wait makes these settle.
NOT_ENABLED_ERR_CODES = frozenset({10039, 10076})


def settling(exc: BaseException, nc: object | None = None) -> bool:
    """JetStream is not ready yet on this server (it is joining or electing), not refusing for good.

    A role started together with its cluster sees these for a few seconds: its server has no
    JetStream API yet (503, no responders), or answers that it cannot place or serve the request.
    """
    if isinstance(exc, APIError) and exc.err_code in NOT_ENABLED_ERR_CODES:
        return False
    if nc is not None:
        no_api = isinstance(exc, NoRespondersError) or (
            isinstance(exc, ServiceUnavailableError) and exc.err_code is None
        )
        if no_api and not getattr(nc, "_server_info", {}).get("jetstream"):
            return False  # this server has no JetStream at all
        if isinstance(exc, NatsTimeoutError) and "permissions violation" in str(getattr(nc, "last_error", "")).lower():
            return False  # a JS API subject this user may not publish to: the server drops the request
    if isinstance(exc, ServiceUnavailableError | NoRespondersError | NatsTimeoutError):
        return True
    return isinstance(exc, APIError) and exc.err_code in SETTLING_ERR_CODES


async def _settled(step: Callable[[], Awaitable[None]], settle_s: float, nc: object | None = None) -> None:
    """Run an idempotent ``step`` again while JetStream settles (``settling``), for at most ``settle_s``."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(settle_s),
        wait=wait_exponential_jitter(initial=0.1, max=2.0),
        retry=retry_if_exception(lambda exc: settling(exc, nc)),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    ):
        with attempt:
            await step()


async def apply(js: JetStreamContext, topo: Topology, *, update: bool = False, settle_s: float = SETTLE_S) -> None:
    """Create what is missing; with ``update``, also bring existing streams and consumers to ``topo``.

    Only the scheduler updates (its settings own the JOBS consumer's lease and delivery cap,
    and it is what an operator restarts to change them). Every other process (gateway,
    worker, CLI tools) only creates what is missing, so one started with a default
    setting cannot shrink RESULTS' retention or JOBS' message size under the others.

    Every step is idempotent, so the whole is run again while JetStream settles (``settling``):
    a role started together with its cluster waits for it instead of failing.
    """
    await _settled(lambda: _apply(js, topo, update=update), settle_s, js._nc)


async def _apply(js: JetStreamContext, topo: Topology, *, update: bool) -> None:
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
    await _apply_buckets(js, topo.key_values, update=update)
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


async def apply_buckets(
    js: JetStreamContext, buckets: tuple[KeyValueConfig, ...], *, update: bool = False, settle_s: float = SETTLE_S
) -> None:
    """Create each KV bucket that is missing; with ``update``, bring existing ones to their declaration.

    A bucket is a stream (``KV_<bucket>``): its TTL, replicas and history are that stream's
    ``max_age``, ``num_replicas`` and ``max_msgs_per_subject``, updated in place like any stream.
    Run again while JetStream settles, as ``apply`` is.
    """
    await _settled(lambda: _apply_buckets(js, buckets, update=update), settle_s, js._nc)


async def _apply_buckets(js: JetStreamContext, buckets: tuple[KeyValueConfig, ...], *, update: bool) -> None:
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
