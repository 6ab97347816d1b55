"""Hardware tiers from a worker's admission benchmark (the seeds' ``WorkerTier``).

    tier 1  low-end CPU / integrated GPU   at least the minimum
    tier 2  mid-range                      gflops >= tier2_gflops
    tier 3  high-end GPU                   gflops >= tier3_gflops and max_alloc_mb >= tier3_alloc_mb

A worker under the minimum (gflops or stable allocation) is not admitted: the scheduler
leaves it out of placement and logs the reason once. A worker that reports no benchmark
(an older version) is treated as tier 1. A job may ask for a minimum tier
(``params.minTier``); only workers at or above it are candidates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TierThresholds:
    min_gflops: float = 1.0
    min_alloc_mb: float = 128.0
    tier2_gflops: float = 500.0
    tier3_gflops: float = 5000.0
    tier3_alloc_mb: float = 8192.0

    @classmethod
    def from_env(cls) -> TierThresholds:
        d = cls()
        return cls(
            min_gflops=float(os.environ.get("TETHER_TIER_MIN_GFLOPS", d.min_gflops)),
            min_alloc_mb=float(os.environ.get("TETHER_TIER_MIN_ALLOC_MB", d.min_alloc_mb)),
            tier2_gflops=float(os.environ.get("TETHER_TIER2_GFLOPS", d.tier2_gflops)),
            tier3_gflops=float(os.environ.get("TETHER_TIER3_GFLOPS", d.tier3_gflops)),
            tier3_alloc_mb=float(os.environ.get("TETHER_TIER3_ALLOC_MB", d.tier3_alloc_mb)),
        )


@dataclass(frozen=True, slots=True)
class TierDecision:
    tier: int | None  # None: not admitted
    reason: str

    @property
    def admitted(self) -> bool:
        return self.tier is not None


def assign_tier(gflops: float | None, max_alloc_mb: float | None, t: TierThresholds) -> TierDecision:
    if gflops is None or max_alloc_mb is None:
        return TierDecision(1, "no admission benchmark reported: tier 1")
    if gflops < t.min_gflops:
        return TierDecision(None, f"rejected: {gflops:.1f} GFLOPS is under the minimum {t.min_gflops:g}")
    if max_alloc_mb < t.min_alloc_mb:
        return TierDecision(
            None, f"rejected: largest stable allocation {max_alloc_mb:g} MB is under the minimum {t.min_alloc_mb:g} MB"
        )
    if gflops >= t.tier3_gflops and max_alloc_mb >= t.tier3_alloc_mb:
        return TierDecision(3, f"tier 3: {gflops:.0f} GFLOPS, {max_alloc_mb:g} MB")
    if gflops >= t.tier2_gflops:
        return TierDecision(2, f"tier 2: {gflops:.0f} GFLOPS")
    return TierDecision(1, f"tier 1: {gflops:.1f} GFLOPS")


def meets(decision: TierDecision, min_tier: int | None) -> bool:
    """Whether a worker with ``decision`` may run a job asking for ``min_tier``."""
    if not decision.admitted:
        return False
    return min_tier is None or (decision.tier or 0) >= min_tier
