"""Job ids: time-ordered random ids, or a deterministic id for an idempotency key."""

from __future__ import annotations

import hashlib
import time

from tether.telemetry import random_hex


def new_job_id() -> str:
    """``j-`` + 12 hex digits of milliseconds + 12 random hex digits: sortable by submit time."""
    return f"j-{int(time.time() * 1000):012x}{random_hex(6)}"


def idempotent_job_id(tenant_id: str, idempotency_key: str) -> str:
    """The one job id a tenant's idempotency key maps to, on every gateway."""
    digest = hashlib.sha256(f"{tenant_id}\x00{idempotency_key}".encode()).hexdigest()
    return f"k-{digest[:32]}"
