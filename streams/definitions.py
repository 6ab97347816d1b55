"""JetStream streams and consumers Tether needs, declared as data.

``apply`` (streams/apply.py) creates each one, or updates it when it exists, at
the start of every role; declaring twice is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from tether import subjects
from tether.settings import DEFAULT_JOB_LEASE_S, Settings

JOBS = "JOBS"
RESULTS = "RESULTS"
DLQ = "DLQ"
PRESENCE = "PRESENCE"
SCHEDULER_CONSUMER = "schedulers"
#: JetStream's notice that it will not deliver a JOBS message again (the consumer's delivery cap).
MAX_DELIVERIES_SUBJECT = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS}.{SCHEDULER_CONSUMER}"
#: Those notices, kept until a scheduler has dead-lettered the job: a notice sent while no scheduler
#: listened (all restarting, or the one that would have heard it died) is not lost with the job.
ADVISORIES = "ADVISORIES"
ADVISORIES_CONSUMER = "schedulers-advisories"
#: KV bucket of trusted / denied public keys (see tether/trust.py), watched by every verifier.
TRUST_BUCKET = "TETHER_TRUST"
#: Object store of signed model artifacts, addressed by manifest digest (see tether/artifacts/).
ARTIFACTS_BUCKET = "TETHER_ARTIFACTS"
#: JetStream redelivers a job a scheduler holds unacknowledged after this long
#: (``Settings.job_lease_s``, ``TETHER_JOB_LEASE_S``); a live scheduler keeps
#: extending it (``in_progress``) while the job runs.
SCHEDULER_ACK_WAIT_S = DEFAULT_JOB_LEASE_S


@dataclass(frozen=True, slots=True)
class Topology:
    streams: tuple[StreamConfig, ...]
    consumers: tuple[tuple[str, ConsumerConfig], ...]
    key_values: tuple[KeyValueConfig, ...] = ()
    object_stores: tuple[ObjectStoreConfig, ...] = ()
    #: Streams a role may start without: one whose subjects another stream already captures
    #: (an operator's audit stream of ``$JS.EVENT.>``) is skipped, with its consumers.
    optional: frozenset[str] = frozenset()


def cluster_replicas(server_info: dict[str, object], configured: int = 0) -> int:
    """Stream replicas: the configured count, else the cluster size capped at 3 (1 on a single server).

    A clustered server lists every member's client URL in ``connect_urls``.
    """
    if configured > 0:
        return configured
    if not server_info.get("cluster"):
        return 1
    urls = server_info.get("connect_urls") or []
    return max(1, min(3, len(urls) if isinstance(urls, list) else 1))


def topology(settings: Settings, server_info: dict[str, object] | None = None) -> Topology:
    r = cluster_replicas(server_info or {}, settings.replicas)
    jobs = StreamConfig(
        name=JOBS,
        subjects=[subjects.JOBS_ALL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=r,
        duplicate_window=settings.jobs_dedupe_s,
        max_msg_size=settings.max_payload + 4096,
        discard=DiscardPolicy.NEW,
        description="Accepted jobs; one durable consumer shared by every scheduler",
    )
    results = StreamConfig(
        name=RESULTS,
        subjects=[subjects.RESULTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=r,
        max_age=settings.results_max_age_s,
        duplicate_window=min(settings.results_dedupe_s, settings.results_max_age_s),
        allow_direct=True,
        description="The one final result per job, kept for replay",
    )
    dlq = StreamConfig(
        name=DLQ,
        subjects=[subjects.DLQ_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=r,
        allow_direct=True,
        description="Jobs that could not run, with their attempt history",
    )
    presence = StreamConfig(
        name=PRESENCE,
        subjects=[subjects.PRESENCE_ALL, subjects.MODELS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=r,
        max_msgs_per_subject=1,
        max_age=max(60.0, settings.heartbeat_s * 12),
        allow_direct=True,
        description="Last heartbeat per worker and last announcement per model, to rebuild fleet views at start",
    )
    advisories = StreamConfig(
        name=ADVISORIES,
        subjects=[MAX_DELIVERIES_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=r,
        description="Max-deliveries notices for JOBS, kept until a scheduler has dead-lettered the job",
    )
    schedulers = ConsumerConfig(
        durable_name=SCHEDULER_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.job_lease_s,
        # Attempts are counted in the store; this cap only catches a job no scheduler can get through
        # (crashing on it each time): past it, the max-deliveries advisory sends it to the DLQ.
        max_deliver=settings.max_deliver,
        max_ack_pending=max(settings.max_inflight * 4, 20_000),
        filter_subject=subjects.JOBS_ALL,
    )
    advisory_readers = ConsumerConfig(
        durable_name=ADVISORIES_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,  # a scheduler that dies handling a notice hands it to another after this
        max_deliver=-1,  # a notice is retried until its job is dead-lettered
        filter_subject=MAX_DELIVERIES_SUBJECT,
    )
    trust = KeyValueConfig(
        bucket=TRUST_BUCKET,
        description="Allowed (allow.<role>.<key>) and denied (deny.<key>) public keys",
        history=1,
        storage=StorageType.FILE,
        replicas=r,
    )
    artifacts = ObjectStoreConfig(
        bucket=ARTIFACTS_BUCKET,
        description="Signed model artifacts: manifests (by digest) and files (by SHA-256)",
        storage=StorageType.FILE,
        replicas=r,
    )
    return Topology(
        streams=(jobs, results, dlq, presence, advisories),
        consumers=((JOBS, schedulers), (ADVISORIES, advisory_readers)),
        key_values=(trust,),
        object_stores=(artifacts,),
        optional=frozenset({ADVISORIES}),
    )


def artifacts_only(topo: Topology) -> Topology:
    """What ``tether models publish`` declares: the artifacts object store alone. A publisher's NATS
    user (``natsauth``) may read and write that store, not look at the pipeline's streams."""
    return Topology(streams=(), consumers=(), object_stores=topo.object_stores)
