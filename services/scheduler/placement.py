"""Choosing a worker for a job, behind an interface the scoring policy can replace.

The foundation's policy is least-loaded: among live workers with the model
warm, take the one with the fewest jobs this scheduler has in flight on it
(ties broken at random), avoiding workers that just failed the job while any
other can serve it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tether.fleet import WorkerEntry


@dataclass(frozen=True, slots=True)
class Choice:
    worker_id: str
    explanation: dict[str, Any] = field(default_factory=dict)


class Placement(Protocol):
    def choose(
        self,
        candidates: list[WorkerEntry],
        *,
        inflight: Mapping[str, int],
        avoid: Collection[str] = (),
    ) -> Choice | None: ...


class LeastLoaded:
    name = "least_loaded"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(
        self,
        candidates: list[WorkerEntry],
        *,
        inflight: Mapping[str, int],
        avoid: Collection[str] = (),
    ) -> Choice | None:
        pool = [c for c in candidates if c.worker_id not in avoid] or candidates
        if not pool:
            return None

        # Work out each worker's load relative to its advertised capacity.
        def load(c: WorkerEntry) -> float:
            return inflight.get(c.worker_id, 0) / max(1, c.presence.capacity)

        best = min(load(c) for c in pool)
        tied = [c for c in pool if load(c) == best]
        pick = tied[0] if len(tied) == 1 else self._rng.choice(tied)
        return Choice(
            pick.worker_id,
            {
                "policy": self.name,
                "worker": pick.worker_id,
                "load": round(best, 4),
                "inflight": inflight.get(pick.worker_id, 0),
                "capacity": pick.presence.capacity,
                "candidates": len(candidates),
                "avoided": sorted(set(avoid) & {c.worker_id for c in candidates}),
            },
        )
