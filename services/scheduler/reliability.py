"""Per-worker reliability: a success rate whose memory fades with a half-life.

Each outcome adds weight 1 to successes or failures after both totals decay by
``0.5 ** (elapsed / half_life_s)``; the score is a success rate smoothed
towards the fleet's mean ``m`` (the mean success rate of the workers with a
record; 0.5 before any): ``(s + 2m) / (s + f + 2)``. A worker never seen scores
``m``, so a new worker looks like an average one rather than a 50% failure; in a
fleet where every job succeeds, new and old workers score alike. Pure, with an
injected clock; the scheduler persists the totals in the store so a restarted
scheduler keeps them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class Record:
    successes: float = 0.0
    failures: float = 0.0
    updated_at: float = 0.0

    def decayed(self, now: float, half_life_s: float) -> Record:
        if self.updated_at <= 0 or now <= self.updated_at:
            return Record(self.successes, self.failures, max(self.updated_at, now))
        k = 0.5 ** ((now - self.updated_at) / half_life_s)
        return Record(self.successes * k, self.failures * k, now)

    def score(self) -> float:
        return (self.successes + 1.0) / (self.successes + self.failures + 2.0)


class Reliability:
    def __init__(self, *, half_life_s: float = 600.0, clock: Callable[[], float] = time.time) -> None:
        self.half_life_s = half_life_s
        self._clock = clock
        self._records: dict[str, Record] = {}
        self._dirty: set[str] = set()
        self._rate_sum = 0.0  # sum of s / (s + f) over records with any outcome (decay keeps ratios)
        self._rated = 0

    @property
    def prior(self) -> float:
        """The fleet's mean success rate: what a worker without a record scores."""
        return min(1.0, max(0.0, self._rate_sum / self._rated)) if self._rated else 0.5

    def _put(self, worker_id: str, r: Record) -> None:
        old = self._records.get(worker_id)
        if old is not None and old.successes + old.failures > 0:
            self._rate_sum -= old.successes / (old.successes + old.failures)
            self._rated -= 1
        if r.successes + r.failures > 0:
            self._rate_sum += r.successes / (r.successes + r.failures)
            self._rated += 1
        if self._rated == 0:
            self._rate_sum = 0.0  # no drift left behind
        self._records[worker_id] = r

    def record(self, worker_id: str, ok: bool) -> None:
        now = self._clock()
        r = self._records.get(worker_id, Record(updated_at=now)).decayed(now, self.half_life_s)
        if ok:
            r.successes += 1.0
        else:
            r.failures += 1.0
        self._put(worker_id, r)
        self._dirty.add(worker_id)

    def score(self, worker_id: str) -> float:
        """Called for every scored candidate of every placement: no allocation, the decay inline."""
        r = self._records.get(worker_id)
        m = self.prior
        if r is None:
            return m
        now = self._clock()
        k = 0.5 ** ((now - r.updated_at) / self.half_life_s) if r.updated_at > 0 and now > r.updated_at else 1.0
        return (r.successes * k + 2.0 * m) / ((r.successes + r.failures) * k + 2.0)

    def get(self, worker_id: str) -> Record | None:
        return self._records.get(worker_id)

    def load(self, rows: Iterable[tuple[str, float, float, float]]) -> None:
        """Restore persisted ``(worker_id, successes, failures, updated_at)`` totals."""
        for worker_id, s, f, at in rows:
            self._put(worker_id, Record(float(s), float(f), float(at)))

    def take_dirty(self) -> list[tuple[str, Record]]:
        """Records changed since the last call (what needs writing to the store)."""
        out = [(w, self._records[w]) for w in sorted(self._dirty) if w in self._records]
        self._dirty.clear()
        return out
