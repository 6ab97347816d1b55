"""Circuit breakers per (model, version, region): stop sending work where it keeps failing.

CLOSED: attempts flow; failures are counted in a sliding window. When
``threshold`` failures land within ``window_s`` the breaker OPENS: no
placements for ``open_s``. Then it is HALF_OPEN: exactly one probe attempt is
let through; its success CLOSES the breaker, its failure re-OPENS it.
Pure state with an injected clock; the scheduler reports transitions
(log line, ``tether.events.breaker.<state>``, a row in the store for
``tether status``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


BreakerKey = tuple[str, str, str]  # (model_id, version, region)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    threshold: int = 5
    window_s: float = 30.0
    open_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Transition:
    key: BreakerKey
    old: BreakerState
    new: BreakerState
    failures: int
    at: float
    reason: str


@dataclass(slots=True)
class CircuitBreaker:
    policy: BreakerPolicy
    state: BreakerState = BreakerState.CLOSED
    failures: deque[float] = field(default_factory=deque)
    opened_at: float = 0.0
    probing: bool = False  # a half-open probe is in flight

    def allows(self, now: float) -> bool:
        """May a new attempt be placed? (Half-open admits one probe at a time.)"""
        if self.state is BreakerState.OPEN:
            return now - self.opened_at >= self.policy.open_s and not self.probing
        if self.state is BreakerState.HALF_OPEN:
            return not self.probing
        return True

    def _trim(self, now: float) -> None:
        while self.failures and now - self.failures[0] > self.policy.window_s:
            self.failures.popleft()


class BreakerBoard:
    """All breakers of one scheduler, keyed by (model, version, region)."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_transition = on_transition
        self._breakers: dict[BreakerKey, CircuitBreaker] = {}

    def _get(self, key: BreakerKey) -> CircuitBreaker:
        b = self._breakers.get(key)
        if b is None:
            b = self._breakers[key] = CircuitBreaker(self.policy)
        return b

    def state(self, key: BreakerKey) -> BreakerState:
        b = self._breakers.get(key)
        if b is None:
            return BreakerState.CLOSED
        if b.state is BreakerState.OPEN and self._clock() - b.opened_at >= self.policy.open_s:
            return BreakerState.HALF_OPEN
        return b.state

    def allows(self, key: BreakerKey) -> bool:
        b = self._breakers.get(key)
        return b is None or b.allows(self._clock())

    def begin(self, key: BreakerKey) -> None:
        """An attempt is being placed under ``key``: an open breaker past its timeout starts its probe."""
        b = self._breakers.get(key)
        if b is None:
            return
        now = self._clock()
        if b.state is BreakerState.OPEN and now - b.opened_at >= self.policy.open_s:
            self._move(key, b, BreakerState.HALF_OPEN, now, "open timeout elapsed; probing")
        if b.state is BreakerState.HALF_OPEN:
            b.probing = True

    def abandon(self, key: BreakerKey) -> None:
        """An attempt ended without saying anything about the model's health (a refusal, bad input):
        a probe it was carrying is released so the next attempt can probe."""
        b = self._breakers.get(key)
        if b is not None:
            b.probing = False

    def success(self, key: BreakerKey) -> None:
        b = self._breakers.get(key)
        if b is None:
            return
        b.probing = False
        if b.state is not BreakerState.CLOSED:
            b.failures.clear()
            self._move(key, b, BreakerState.CLOSED, self._clock(), "probe succeeded")

    def failure(self, key: BreakerKey, reason: str = "") -> None:
        b = self._get(key)
        now = self._clock()
        was_probe = b.probing
        b.probing = False
        if b.state is BreakerState.HALF_OPEN or (b.state is BreakerState.OPEN and was_probe):
            b.opened_at = now
            self._move(key, b, BreakerState.OPEN, now, f"probe failed: {reason}")
            return
        if b.state is BreakerState.OPEN:
            return
        b.failures.append(now)
        b._trim(now)
        if len(b.failures) >= self.policy.threshold:
            b.opened_at = now
            self._move(
                key,
                b,
                BreakerState.OPEN,
                now,
                f"{len(b.failures)} failures within {self.policy.window_s:g}s: {reason}",
            )

    def snapshot(self) -> list[dict[str, object]]:
        now = self._clock()
        out: list[dict[str, object]] = []
        for (model, version, region), b in sorted(self._breakers.items()):
            b._trim(now)
            out.append(
                {
                    "modelId": model,
                    "version": version,
                    "region": region,
                    "state": str(self.state((model, version, region))),
                    "failures": len(b.failures),
                    "openedAt": b.opened_at or None,
                }
            )
        return out

    def _move(self, key: BreakerKey, b: CircuitBreaker, new: BreakerState, now: float, reason: str) -> None:
        old, b.state = b.state, new
        if old is not new and self._on_transition is not None:
            self._on_transition(Transition(key, old, new, len(b.failures), now, reason))
