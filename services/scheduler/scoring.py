"""Affinity scoring: which live worker should run this job, and why.

Hard filters first: the worker serves the model (warm, or evicted but loadable),
is HEALTHY (not SUSPECT or OFFLINE), is not draining, passed admission and is at
least the job's minimum hardware tier (``tiers.py``), and the breaker of
(model, version, worker's region) lets work through. Workers that just failed
this job are avoided while any other can serve it.

Each survivor gets weighted terms, every one in [0, 1]:

=========== ================================================================
region      1 when the worker is in the job's preferred region (else the scheduler's)
device      1 when the job asked for no device class or the worker has it
load        1 / (1 + (reported queue depth + this scheduler's in-flight) / capacity)
warm        1 when the model is warm (no load before the first token)
reliability the worker's decaying success rate (see ``reliability.py``)
rtt         1 / (1 + measured dispatch round trip / 10 ms)
=========== ================================================================

Decisions stay fast in big fleets: at most ``sample`` candidates are scored,
drawn at random from the model's index (the "power of d choices" idea), so the
cost does not grow with the fleet; a full scan happens only when no sampled
worker passes the filters.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from schemas import ModelState
from services.scheduler.placement import Choice
from services.scheduler.tiers import TierThresholds, assign_tier
from tether.fleet import FleetView, Health, WorkerEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Weights:
    region: float = 1.0
    device: float = 1.0
    load: float = 2.0
    warm: float = 3.0
    reliability: float = 2.0
    rtt: float = 0.5

    @classmethod
    def parse(cls, text: str) -> Weights:
        """``"load=3,warm=2"`` -> Weights with those two changed (the README's TETHER_WEIGHTS)."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, raw = part.partition("=")
            if name.strip() not in cls.__dataclass_fields__:
                raise ValueError(f"unknown weight {name.strip()!r} (known: {', '.join(cls.__dataclass_fields__)})")
            values[name.strip()] = float(raw)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class JobNeeds:
    model_id: str
    version: str
    region: str
    device_class: str | None = None
    min_tier: int | None = None


SERVABLE = (ModelState.WARM, ModelState.EVICTED)


def terms(
    entry: WorkerEntry,
    needs: JobNeeds,
    *,
    inflight: int,
    reliability: float,
    rtt_s: float | None,
    model_state: ModelState,
) -> dict[str, float]:
    p = entry.presence
    depth = p.queue_depth + inflight
    return {
        "region": 1.0 if p.region == needs.region else 0.0,
        "device": 1.0 if needs.device_class in (None, p.device_class) else 0.0,
        "load": 1.0 / (1.0 + depth / max(1, p.capacity)),
        "warm": 1.0 if model_state is ModelState.WARM else 0.0,
        "reliability": reliability,
        "rtt": 1.0 if rtt_s is None else 1.0 / (1.0 + rtt_s / 0.010),
    }


def total(t: Mapping[str, float], w: Weights) -> float:
    return sum(getattr(w, k) * v for k, v in t.items())


class AffinityPlacement:
    name = "affinity"

    def __init__(
        self,
        fleet: FleetView,
        *,
        weights: Weights | None = None,
        sample: int = 16,
        reliability: Callable[[str], float] = lambda _w: 0.5,
        rtt: Callable[[str], float | None] = lambda _w: None,
        breaker_allows: Callable[[str, str, str], bool] = lambda _m, _v, _r: True,
        rng: random.Random | None = None,
        tiers: TierThresholds | None = None,
    ) -> None:
        self.fleet = fleet
        self.weights = weights or Weights()
        self.sample = sample
        self._reliability = reliability
        self._rtt = rtt
        self._breaker_allows = breaker_allows
        self._rng = rng or random.Random()
        self.tiers = tiers or TierThresholds.from_env()
        self._rejected: set[str] = set()  # workers whose admission rejection was logged

    def choose(
        self, needs: JobNeeds, *, inflight: Mapping[str, int], avoid: Collection[str] = ()
    ) -> Choice | None:
        pool = self.fleet.serving(needs.model_id, needs.version)
        if not pool:
            return None
        now = self.fleet.now()
        excluded: dict[str, int] = {}
        picked = self._best(needs, self._draw(pool), inflight, avoid, now, excluded)
        if len(pool) > self.sample and (picked is None or picked[0].worker_id in avoid):
            excluded.clear()  # nothing usable in the sample: look at everyone
            picked = self._best(needs, pool, inflight, avoid, now, excluded)
        if picked is None:
            return None
        entry, score, t = picked
        explanation: dict[str, Any] = {
            "policy": self.name,
            "worker": entry.worker_id,
            "score": round(score, 4),
            "terms": {k: round(v, 4) for k, v in t.items()},
            "weights": asdict(self.weights),
            "candidates": len(pool),
            "scored": min(len(pool), self.sample),
            "excluded": excluded,
            "avoided": sorted(set(avoid) & {e.worker_id for e in pool}) if avoid else [],
        }
        return Choice(entry.worker_id, explanation)

    def _draw(self, pool: list[WorkerEntry]) -> list[WorkerEntry]:
        return pool if len(pool) <= self.sample else self._rng.sample(pool, self.sample)

    def _best(
        self,
        needs: JobNeeds,
        entries: list[WorkerEntry],
        inflight: Mapping[str, int],
        avoid: Collection[str],
        now: float,
        excluded: dict[str, int],
    ) -> tuple[WorkerEntry, float, dict[str, float]] | None:
        best: tuple[WorkerEntry, float, dict[str, float]] | None = None
        best_avoided: tuple[WorkerEntry, float, dict[str, float]] | None = None
        for entry in entries:
            reason = self._excluded(entry, needs, now)
            if reason is not None:
                excluded[reason] = excluded.get(reason, 0) + 1
                continue
            state = self.fleet.model_state(entry, needs.model_id, needs.version)
            t = terms(
                entry,
                needs,
                inflight=inflight.get(entry.worker_id, 0),
                reliability=self._reliability(entry.worker_id),
                rtt_s=self._rtt(entry.worker_id),
                model_state=state,
            )
            # a small random jitter breaks ties without favouring list order
            score = total(t, self.weights) + self._rng.random() * 1e-6
            if entry.worker_id in avoid:
                if best_avoided is None or score > best_avoided[1]:
                    best_avoided = (entry, score, t)
            elif best is None or score > best[1]:
                best = (entry, score, t)
        return best or best_avoided

    def _excluded(self, entry: WorkerEntry, needs: JobNeeds, now: float) -> str | None:
        p = entry.presence
        if p.draining:
            return "draining"
        health = self.fleet.health(entry, now)
        if health is not Health.HEALTHY:
            return health.lower()
        if not self._breaker_allows(needs.model_id, needs.version, p.region):
            return "breaker_open"
        decision = assign_tier(p.gflops, p.max_alloc_mb, self.tiers)
        if not decision.admitted:
            if p.worker_id not in self._rejected:
                self._rejected.add(p.worker_id)
                log.warning("worker not admitted", extra={"worker": p.worker_id, "reason": decision.reason})
            return "not_admitted"
        if needs.min_tier is not None and (decision.tier or 0) < needs.min_tier:
            return "below_min_tier"
        return None
