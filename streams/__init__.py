"""JetStream declarations, applied idempotently at start."""

from streams.apply import apply
from streams.definitions import (
    ADVISORIES,
    ADVISORIES_CONSUMER,
    ARTIFACTS_BUCKET,
    DLQ,
    JOBS,
    MAX_DELIVERIES_SUBJECT,
    PRESENCE,
    RESULTS,
    SCHEDULER_CONSUMER,
    TRUST_BUCKET,
    Topology,
    artifacts_only,
    topology,
)

__all__ = [
    "ADVISORIES",
    "ADVISORIES_CONSUMER",
    "ARTIFACTS_BUCKET",
    "DLQ",
    "JOBS",
    "MAX_DELIVERIES_SUBJECT",
    "PRESENCE",
    "RESULTS",
    "SCHEDULER_CONSUMER",
    "TRUST_BUCKET",
    "Topology",
    "apply",
    "artifacts_only",
    "topology",
]
