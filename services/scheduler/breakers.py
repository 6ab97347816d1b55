"""Circuit breakers per (model, version, region): stop sending work where it keeps failing.

CLOSED: attempts flow; failures are counted in a sliding window. When
``threshold`` failures land within ``window_s`` the breaker OPENS: no
placements for ``open_s``. Then it is HALF_OPEN: exactly one probe attempt is
let through; its success CLOSES the breaker, its failure re-OPENS it.

Each placed attempt holds a ``BreakerTicket``, taken with ``try_acquire`` (or
the ``attempt`` context manager) in the same step as the placement, before any
await: a half-open breaker hands out one probe ticket and no other until that
ticket ends. Only the probe's own outcome moves a half-open breaker; outcomes of
attempts placed before the breaker opened (stale successes, late failures) and
abandoned attempts leave an open or half-open breaker as it is.
Pure state with an injected clock; the scheduler reports transitions
(log line, ``tether.events.breaker.<state>``, a row in the store for
``tether status``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@dataclass(slots=True, eq=False)
class BreakerTicket:
    """One placed attempt's pass through a breaker; ``probe`` when it is the half-open probe."""

    key: BreakerKey
    probe: bool = False
    settled: bool = False  # its outcome (or abandonment) was reported


@dataclass(slots=True)
class CircuitBreaker:
    policy: BreakerPolicy
    state: BreakerState = BreakerState.CLOSED
    failures: deque[float] = field(default_factory=deque)
    opened_at: float = 0.0
    probe: BreakerTicket | None = None  # the half-open probe in flight

    @property
    def probing(self) -> bool:
        return self.probe is not None

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

    def try_acquire(self, key: BreakerKey) -> BreakerTicket | None:
        """A pass for one attempt under ``key``, or None when the breaker lets nothing through now.

        Atomic (no await): an open breaker past its timeout turns half-open and this pass is its
        one probe; a half-open breaker whose probe is out gives no pass.
        """
        b = self._breakers.get(key)
        if b is None:
            return BreakerTicket(key)
        now = self._clock()
        if not b.allows(now):
            return None
        if b.state is BreakerState.OPEN:
            self._move(key, b, BreakerState.HALF_OPEN, now, "open timeout elapsed; probing")
        if b.state is BreakerState.HALF_OPEN:
            b.probe = BreakerTicket(key, probe=True)
            return b.probe
        return BreakerTicket(key)

    @contextmanager
    def attempt(self, key: BreakerKey) -> Iterator[BreakerTicket | None]:
        """``try_acquire`` for a block; a ticket still unsettled when the block ends is abandoned."""
        ticket = self.try_acquire(key)
        try:
            yield ticket
        finally:
            if ticket is not None:
                self.abandon(ticket)

    def _settle(self, ticket: BreakerTicket) -> tuple[CircuitBreaker | None, bool]:
        """Mark ``ticket`` settled: (its breaker, whether it is that breaker's probe in flight)."""
        if ticket.settled:
            return None, False
        ticket.settled = True
        b = self._breakers.get(ticket.key)
        if b is None:
            return None, False
        mine = ticket.probe and b.probe is ticket
        if mine:
            b.probe = None
        return b, mine

    def abandon(self, ticket: BreakerTicket) -> None:
        """An attempt ended without saying anything about the model's health (a refusal, bad input,
        an error on our side): if it was the probe, the next attempt may probe. Others change nothing."""
        self._settle(ticket)

    def success(self, ticket: BreakerTicket) -> None:
        b, probe = self._settle(ticket)
        if b is not None and probe and b.state is not BreakerState.CLOSED:
            b.failures.clear()
            self._move(ticket.key, b, BreakerState.CLOSED, self._clock(), "probe succeeded")
        # any other success: CLOSED stays CLOSED; OPEN / HALF_OPEN wait for their own probe

    def failure(self, ticket: BreakerTicket | BreakerKey, reason: str = "") -> None:
        """A failed attempt (a bare key: one not placed through a ticket, counted as a plain failure)."""
        if isinstance(ticket, BreakerTicket):
            if ticket.settled:
                return
            key = ticket.key
            _b, probe = self._settle(ticket)
        else:
            key, probe = ticket, False
        b = self._get(key)
        now = self._clock()
        if probe:
            b.opened_at = now
            self._move(key, b, BreakerState.OPEN, now, f"probe failed: {reason}")
            return
        if b.state is not BreakerState.CLOSED:
            return  # placed before it opened: the open period (or its probe) decides
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
