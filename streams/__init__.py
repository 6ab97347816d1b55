"""JetStream declarations, applied idempotently at start."""

from streams.apply import apply
from streams.definitions import (
    ARTIFACTS_BUCKET,
    DLQ,
    JOBS,
    PRESENCE,
    RESULTS,
    SCHEDULER_CONSUMER,
    TRUST_BUCKET,
    Topology,
    topology,
)

__all__ = [
    "ARTIFACTS_BUCKET",
    "DLQ",
    "JOBS",
    "PRESENCE",
    "RESULTS",
    "SCHEDULER_CONSUMER",
    "TRUST_BUCKET",
    "Topology",
    "apply",
    "topology",
]
