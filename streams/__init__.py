"""JetStream declarations, applied idempotently at start."""

from streams.apply import apply
from streams.definitions import DLQ, JOBS, PRESENCE, RESULTS, SCHEDULER_CONSUMER, Topology, topology

__all__ = ["DLQ", "JOBS", "PRESENCE", "RESULTS", "SCHEDULER_CONSUMER", "Topology", "apply", "topology"]
