"""Affinity scoring: which live worker should run this job, and why.

Hard filters first: the worker serves the model (warm, or evicted but loadable),
is HEALTHY (not SUSPECT or OFFLINE), is not draining, its key is still trusted, passed admission and is at
least the job's minimum hardware tier (``tiers.py``), and the breaker of
(model, version, worker's region) lets work through. Workers that just failed
this job are avoided while any other can serve it.

Each survivor gets weighted terms, every one in [0, 1]:

=========== ================================================================
region      1 when the worker is in the job's preferred region (else the scheduler's)
device      1 when the job asked for no device class or the worker has it
load        1 / (1 + (reported queue depth + this scheduler's in-flight) / capacity)
warm        1 when the model is warm (no load before the first token)
reliability the worker's decaying success rate; the fleet's mean for a new one (``reliability.py``)
rtt         1 / (1 + measured dispatch round trip / 10 ms)
=========== ================================================================

Decisions stay fast in big fleets: at most ``sample`` candidates are scored,
drawn at random from the model's index (the "power of d choices" idea), so the
cost does not grow with the fleet; a full scan happens only when no sampled
worker passes the filters. Equal scores (within ``TIE``) are broken at random,
so identical workers share the work.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from schemas import ModelState, Presence
from services.scheduler.placement import Choice
from tether.fleet import FleetView, WorkerEntry
from tether.tiers import TierDecision, TierThresholds, assign_tier

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

#: Scores this close are a tie, broken at random (float noise must not pick one worker for good).
TIE = 1e-9
#: The terms in ``terms()``'s order (``Weights``'s fields).
_TERMS = ("region", "device", "load", "warm", "reliability", "rtt")
_NO_TERMS = (0.0,) * len(_TERMS)


def terms(
    entry: WorkerEntry,
    needs: JobNeeds,
    *,
    inflight: int,
    reliability: float,
    rtt_s: float | None,
    model_state: ModelState,
) -> dict[str, float]:
    values = term_values(
        entry.presence, needs, inflight=inflight, reliability=reliability, rtt_s=rtt_s,
        warm=model_state is ModelState.WARM,
    )
    return dict(zip(_TERMS, values, strict=True))


def term_values(
    p: Presence, needs: JobNeeds, *, inflight: int, reliability: float, rtt_s: float | None, warm: bool
) -> tuple[float, float, float, float, float, float]:
    """The terms, in ``_TERMS``'s order, as a tuple (the hot loop scores every candidate with it)."""
    return (
        1.0 if p.region == needs.region else 0.0,
        1.0 if needs.device_class is None or needs.device_class == p.device_class else 0.0,
        1.0 / (1.0 + max(0, p.queue_depth + inflight) / max(1, p.capacity)),
        1.0 if warm else 0.0,
        reliability,
        1.0 if rtt_s is None else 1.0 / (1.0 + rtt_s / 0.010),
    )


def total(t: Mapping[str, float], w: Weights) -> float:
    """The weighted sum of ``terms`` (what ``AffinityPlacement`` computes inline)."""
    return sum(getattr(w, k) * v for k, v in t.items())


class AffinityPlacement:
    name = "affinity"

    def __init__(
        self,
        fleet: FleetView,
        *,
        weights: Weights | None = None,
        sample: int = 8,
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
        self._weights_dict = asdict(self.weights)
        self.tiers = tiers or TierThresholds.from_env()
        self._tiers: dict[str, tuple[float | None, float | None, TierDecision]] = {}  # per worker
        fleet.on_forget.append(lambda worker_id: self._tiers.pop(worker_id, None))

    def choose(
        self, needs: JobNeeds, *, inflight: Mapping[str, int], avoid: Collection[str] = ()
    ) -> Choice | None:
        index = self.fleet.serving_index(needs.model_id, needs.version)
        if not index:
            return None
        now = self.fleet.now()
        excluded: dict[str, int] = {}
        picked = self._best(needs, index.sample(self.sample, self._rng), inflight, avoid, now, excluded)
        scored = min(len(index), self.sample)
        if len(index) > self.sample and (picked is None or picked[0].worker_id in avoid):
            excluded.clear()  # nothing usable in the sample: look at everyone
            picked = self._best(needs, index.entries(), inflight, avoid, now, excluded)
            scored = len(index)
        if picked is None:
            return None
        entry, score, t = picked
        explanation: dict[str, Any] = {
            "policy": self.name,
            "worker": entry.worker_id,
            "score": round(score, 4),
            "terms": {k: round(v, 4) for k, v in t.items()},
            "weights": self._weights_dict,
            "candidates": len(index),
            "scored": scored,
            "excluded": excluded,
            "avoided": sorted(avoid),
        }
        return Choice(entry.worker_id, explanation)

    def _best(
        self,
        needs: JobNeeds,
        entries: list[WorkerEntry],
        inflight: Mapping[str, int],
        avoid: Collection[str],
        now: float,
        excluded: dict[str, int],
    ) -> tuple[WorkerEntry, float, dict[str, float]] | None:
        # The hot loop of every decision: plain arithmetic, the terms dict is built for the winner only.
        w = self.weights
        key = (needs.model_id, needs.version)
        healthy_after = now - 2 * self.fleet.heartbeat_s
        best: WorkerEntry | None = None
        best_avoided: WorkerEntry | None = None
        best_score = best_avoided_score = -1.0
        best_t = best_avoided_t = _NO_TERMS
        ties = 0
        for entry in entries:
            p = entry.presence
            if p.draining or entry.last_seen < healthy_after:
                reason = "draining" if p.draining else self.fleet.health(entry, now).lower()
                excluded[reason] = excluded.get(reason, 0) + 1
                continue
            if not self.fleet.trusted(entry):
                excluded["untrusted"] = excluded.get("untrusted", 0) + 1
                continue
            if not self._breaker_allows(needs.model_id, needs.version, p.region):
                excluded["breaker_open"] = excluded.get("breaker_open", 0) + 1
                continue
            if p.gflops is not None or needs.min_tier is not None:  # no benchmark, no minimum: tier 1
                reason = self._tier_exclusion(entry, needs.min_tier)
                if reason is not None:
                    excluded[reason] = excluded.get(reason, 0) + 1
                    continue
            wid = p.worker_id
            if inflight.get(wid, 0) >= max(1, p.capacity):  # it would refuse: full with our jobs alone
                excluded["full"] = excluded.get("full", 0) + 1
                continue
            # kept for whoever wins, so the winner's terms are not computed again
            t = term_values(
                p, needs, inflight=inflight.get(wid, 0), reliability=self._reliability(wid), rtt_s=self._rtt(wid),
                warm=entry.served.get(key) is ModelState.WARM,
            )
            score = (
                w.region * t[0] + w.device * t[1] + w.load * t[2] + w.warm * t[3] + w.reliability * t[4] + w.rtt * t[5]
            )
            if wid in avoid:
                if score > best_avoided_score:
                    best_avoided, best_avoided_score, best_avoided_t = entry, score, t
            elif score > best_score + TIE:
                best, best_score, best_t, ties = entry, score, t, 1
            elif score >= best_score - TIE:  # a tie: each of the tied wins with equal chance
                ties += 1
                if self._rng.random() * ties < 1.0:
                    best, best_t = entry, t
        if best is not None:
            return best, best_score, dict(zip(_TERMS, best_t, strict=True))
        if best_avoided is not None:
            return best_avoided, best_avoided_score, dict(zip(_TERMS, best_avoided_t, strict=True))
        return None

    def _tier_exclusion(self, entry: WorkerEntry, min_tier: int | None) -> str | None:
        """Why a worker may not take this job because of its hardware tier (None: it may)."""
        p = entry.presence
        cached = self._tiers.get(p.worker_id)
        if cached is None or cached[:2] != (p.gflops, p.max_alloc_mb):
            decision = assign_tier(p.gflops, p.max_alloc_mb, self.tiers)
            self._tiers[p.worker_id] = (p.gflops, p.max_alloc_mb, decision)
            if not decision.admitted:
                log.warning("worker not admitted", extra={"worker": p.worker_id, "reason": decision.reason})
        else:
            decision = cached[2]
        if not decision.admitted:
            return "not_admitted"
        if min_tier is not None and (decision.tier or 0) < min_tier:
            return "below_min_tier"
        return None
