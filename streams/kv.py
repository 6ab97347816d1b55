"""KV buckets the gateways share, declared as data and created idempotently at start.

| bucket | key | value |
| --- | --- | --- |
| ``tether_quota`` | ``q.<hash of tenant and scope>`` | token bucket state ``{"tokens", "ts"}`` (compare-and-set) |
| ``tether_apikeys`` | ``k.<sha256 of the API key>`` | ``{"tenant", "name", "createdAt"}``; the key itself is never stored |
| ``tether_idempotency`` | ``i.<job id>`` | SHA-256 of the first request body sent with that key |
| ``tether_gateways`` | ``g.<gateway id>`` | the gateway's SLI snapshot, rewritten every few seconds |
| ``tether_resume`` | ``r.<sha256 of the job id>`` | a parked streaming job's delivered prefix (schedulers only) |
| ``tether_canary`` | ``canaries`` | every canary rollout, by model id (``services/gateway/canary.py``; compare-and-set) |
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from streams.apply import apply_buckets
from streams.definitions import cluster_replicas
from tether.settings import Settings

QUOTA_BUCKET = "tether_quota"
APIKEYS_BUCKET = "tether_apikeys"
IDEMPOTENCY_BUCKET = "tether_idempotency"
GATEWAYS_BUCKET = "tether_gateways"
GATEWAY_SNAPSHOT_TTL_S = 30.0
RESUME_BUCKET = "tether_resume"
CANARY_BUCKET = "tether_canary"


def kv_buckets(settings: Settings, server_info: dict[str, object] | None = None) -> tuple[KeyValueConfig, ...]:
    r = cluster_replicas(server_info or {}, settings.replicas)
    return (
        KeyValueConfig(
            bucket=QUOTA_BUCKET,
            description="Per-tenant token buckets shared by every gateway",
            history=1,
            ttl=24 * 3600.0,
            storage=StorageType.FILE,
            replicas=r,
        ),
        KeyValueConfig(
            bucket=APIKEYS_BUCKET,
            description="API key hashes -> tenant",
            history=1,
            storage=StorageType.FILE,
            replicas=r,
        ),
        KeyValueConfig(
            bucket=IDEMPOTENCY_BUCKET,
            description="Idempotency key -> fingerprint of the first request body",
            history=1,
            ttl=settings.results_max_age_s,
            storage=StorageType.FILE,
            replicas=r,
        ),
        KeyValueConfig(
            bucket=CANARY_BUCKET,
            description="Canary rollouts: traffic shares and error budgets per model",
            history=5,
            storage=StorageType.FILE,
            replicas=r,
        ),
        KeyValueConfig(
            bucket=GATEWAYS_BUCKET,
            description="Live SLI snapshots, one per gateway",
            history=1,
            ttl=GATEWAY_SNAPSHOT_TTL_S,
            storage=StorageType.MEMORY,
            replicas=r,
        ),
    )


def resume_bucket(settings: Settings, server_info: dict[str, object] | None = None) -> KeyValueConfig:
    """Delivered prefixes of streaming jobs waiting in JOBS, for whichever scheduler takes them next."""
    return KeyValueConfig(
        bucket=RESUME_BUCKET,
        description="A parked streaming job's delivered prefix, so any scheduler resumes it",
        history=1,
        ttl=settings.queue_wait_s + settings.job_lease_s + 60.0,
        storage=StorageType.FILE,
        replicas=cluster_replicas(server_info or {}, settings.replicas),
    )


async def apply_kv(js: JetStreamContext, buckets: tuple[KeyValueConfig, ...], *, update: bool = False) -> None:
    """Create each bucket that does not exist yet; with ``update`` (the scheduler), also bring existing
    ones to these declarations (a longer queue wait lengthens ``tether_resume``'s TTL, a longer RESULTS
    retention ``tether_idempotency``'s, a larger cluster their replicas)."""
    await apply_buckets(js, buckets, update=update)


async def live_entries(js: JetStreamContext, bucket: str) -> dict[str, bytes]:
    """Every live key of ``bucket`` with its value, read without a watcher.

    nats-py's ``KeyValue.keys()`` and a fresh ``watchall()`` can end their initial pass before the
    first entry arrives: they send the "no more" marker when the consumer's ``num_pending`` is 0 and
    nothing has been received yet, which is also true while the entries are still on the wire. A
    caller then sees an empty bucket (an API key "not found" right after it was listed). Here the
    subjects come from the stream's own state (one ``STREAM.INFO`` with a subject filter) and each
    value from a get, so every key stored before the call is seen. A key deleted or purged is left
    out. Meant for small buckets (API keys, gateway snapshots, trust entries): nats-server lists at
    most 100,000 subjects in one reply.
    """
    kv = await js.key_value(bucket)
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
    out: dict[str, bytes] = {}
    for subject in sorted((info.state.subjects or {}).keys()):
        key = subject.removeprefix(prefix)
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):  # deleted, purged or expired since the listing
            continue
        if entry.value:
            out[key] = entry.value
    return out
