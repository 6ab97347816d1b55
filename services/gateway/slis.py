"""Service level indicators a gateway measures: latency by model, success, throttle, shed and
stale-cache rates.

The stale-cache rate is the share of completed requests whose model was not warm in the
worker's cache when the job reached it (evicted or never loaded: the job waited for a load).

Each gateway keeps a sliding window (``WINDOW_S``) of per-second buckets with a latency
histogram per model (fixed log-spaced bounds, so histograms of several gateways add up)
and outcome counts. ``snapshot()`` is plain JSON; every gateway writes its own to the KV
bucket ``tether_gateways`` and readers (the dashboard, ``tether status``) ``merge`` them.
Since its start the gateway also keeps cumulative totals (``Totals``) for Prometheus
(``services/gateway/http/metrics.py``), which wants counters that only grow.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from streams.kv import GATEWAYS_BUCKET, live_entries

log = logging.getLogger(__name__)

WINDOW_S = 300
# latency bucket upper bounds in ms: 0.5 ms .. ~10 min, about 12% apart
BOUNDS_MS: tuple[float, ...] = tuple(round(0.5 * 1.12**i, 3) for i in range(125))
THROTTLED = "quota_exceeded"
SHED = "no_capacity"
#: Prometheus histogram bounds, in seconds (its base unit), for request durations.
PROM_BOUNDS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)


@dataclass(slots=True)
class Totals:
    """Counts since the gateway started, per model: outcomes, cold starts, a duration histogram."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, outcome)
    cold: Counter[str] = field(default_factory=Counter)
    buckets: dict[str, list[int]] = field(default_factory=dict)  # model -> count per PROM_BOUNDS_S bound
    seconds: Counter[str] = field(default_factory=Counter)  # model -> sum of durations (s)

    def add(self, model: str, outcome: str, latency_ms: float | None, cold: bool) -> None:
        self.outcomes[(model, outcome)] += 1
        if cold:
            self.cold[model] += 1
        if outcome == "ok" and latency_ms is not None:
            counts = self.buckets.setdefault(model, [0] * (len(PROM_BOUNDS_S) + 1))  # the last: +Inf
            counts[bisect.bisect_left(PROM_BOUNDS_S, latency_ms / 1000.0)] += 1
            self.seconds[model] += latency_ms / 1000.0


@dataclass(slots=True)
class _Second:
    ts: int
    latency: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    outcomes: Counter[str] = field(default_factory=Counter)  # "ok" or an error code
    completed: int = 0
    cold: int = 0  # completed requests whose model was not warm on the worker


def bucket_of(ms: float) -> int:
    return min(bisect.bisect_left(BOUNDS_MS, ms), len(BOUNDS_MS) - 1)


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile (None when empty)."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    for idx in sorted(hist):
        seen += hist[idx]
        if seen >= rank:
            return BOUNDS_MS[idx]
    return BOUNDS_MS[max(hist)]


class Slis:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seconds: deque[_Second] = deque()
        self.totals = Totals()

    def _now_bucket(self) -> _Second:
        now = int(self._clock())
        if not self._seconds or self._seconds[-1].ts != now:
            self._seconds.append(_Second(now))
        while self._seconds and self._seconds[0].ts <= now - WINDOW_S:
            self._seconds.popleft()
        return self._seconds[-1]

    def record(self, model: str, outcome: str, latency_ms: float | None = None, *, cold: bool = False) -> None:
        """One finished request: ``outcome`` is ``ok`` or an error code; ``cold``: it waited for a model load."""
        self.totals.add(model, outcome, latency_ms, cold)
        sec = self._now_bucket()
        sec.outcomes[outcome] += 1
        if outcome == "ok":
            sec.completed += 1
            sec.cold += cold
            if latency_ms is not None:
                sec.latency[model][bucket_of(latency_ms)] += 1

    def snapshot(self) -> dict[str, Any]:
        self._now_bucket()
        latency: dict[str, Counter[int]] = defaultdict(Counter)
        outcomes: Counter[str] = Counter()
        per_second: dict[str, int] = {}
        cold = 0
        for sec in self._seconds:
            for model, hist in sec.latency.items():
                latency[model].update(hist)
            outcomes.update(sec.outcomes)
            per_second[str(sec.ts)] = sec.completed
            cold += sec.cold
        return {
            "cold": cold,
            "ts": self._clock(),
            "windowS": WINDOW_S,
            "latency": {m: {str(k): v for k, v in h.items()} for m, h in latency.items()},
            "outcomes": dict(outcomes),
            "completedPerSecond": per_second,
        }


def merge(snapshots: Iterable[dict[str, Any]], *, now: float | None = None) -> dict[str, Any]:
    """Add up several gateways' snapshots into the SLIs a person reads."""
    latency: dict[str, Counter[int]] = defaultdict(Counter)
    outcomes: Counter[str] = Counter()
    per_second: Counter[int] = Counter()
    gateways = cold = 0
    for snap in snapshots:
        gateways += 1
        cold += int(snap.get("cold") or 0)
        for model, hist in (snap.get("latency") or {}).items():
            latency[model].update({int(k): int(v) for k, v in hist.items()})
        outcomes.update({k: int(v) for k, v in (snap.get("outcomes") or {}).items()})
        per_second.update({int(k): int(v) for k, v in (snap.get("completedPerSecond") or {}).items()})
    total = sum(outcomes.values())
    now_s = int(time.time() if now is None else now)
    series = [[t, per_second.get(t, 0)] for t in range(now_s - 59, now_s + 1)]
    return {
        "gateways": gateways,
        "requests": total,
        "successRate": round(outcomes.get("ok", 0) / total, 4) if total else None,
        "throttleRate": round(outcomes.get(THROTTLED, 0) / total, 4) if total else None,
        "shedRate": round(outcomes.get(SHED, 0) / total, 4) if total else None,
        "staleCacheRate": round(cold / outcomes["ok"], 4) if outcomes.get("ok") else None,
        "outcomes": dict(outcomes),
        "latencyMs": {
            model: {
                "p50": percentile(hist, 0.50),
                "p95": percentile(hist, 0.95),
                "count": sum(hist.values()),
            }
            for model, hist in sorted(latency.items())
        },
        "throughput": series,  # [unix second, completed requests] for the last 60 s
    }


async def publish_snapshots(js: JetStreamContext, gateway_id: str, slis: Slis, *, every_s: float = 2.0) -> None:
    """Write this gateway's snapshot to ``tether_gateways`` every ``every_s`` seconds, until cancelled."""
    kv = await js.key_value(GATEWAYS_BUCKET)
    key = "g." + gateway_id
    while True:
        try:
            await kv.put(key, json.dumps({**slis.snapshot(), "gatewayId": gateway_id}).encode())
        except Exception as exc:  # NATS briefly away: the next round writes it
            log.debug("sli snapshot not written", extra={"error": str(exc)})
        await asyncio.sleep(every_s)


async def read_snapshots(js: JetStreamContext) -> list[dict[str, Any]]:
    """Every live gateway's snapshot (entries expire after ``GATEWAY_SNAPSHOT_TTL_S``)."""
    return [json.loads(value) for value in (await live_entries(js, GATEWAYS_BUCKET)).values()]
