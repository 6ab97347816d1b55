"""The replay guard of signed envelopes: (public key, nonce) pairs remembered until they expire."""

from __future__ import annotations

from collections import deque

__all__ = ["NonceCache"]


class NonceCache:
    """Remembers (public key, nonce) pairs until they expire; O(1) amortised per message.

    Entries expire at ``timestamp + skew`` (after that the envelope is stale anyway).
    ``max_entries`` caps memory under flood: past it the oldest entries are dropped
    (counted in ``evicted``), which could let a replay of a dropped nonce through.
    """

    __slots__ = ("_expiry", "_order", "evicted", "max_entries")

    def __init__(self, max_entries: int = 2_000_000) -> None:
        self._expiry: dict[bytes, float] = {}
        self._order: deque[tuple[float, bytes]] = deque()
        self.max_entries = max_entries
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: bytes) -> bool:
        return key in self._expiry

    def expire(self, now: float) -> None:
        """Drop entries whose expiry is before ``now`` (from the oldest insertion on)."""
        order, expiry = self._order, self._expiry
        while order and order[0][0] < now:
            expiry.pop(order.popleft()[1], None)

    def add(self, key: bytes, expires_at: float, now: float) -> bool:
        """Record ``key``; False when it was already there (a replay)."""
        self.expire(now)
        if key in self._expiry:
            return False
        while len(self._expiry) >= self.max_entries and self._order:
            self._expiry.pop(self._order.popleft()[1], None)
            self.evicted += 1
        self._expiry[key] = expires_at
        self._order.append((expires_at, key))
        return True
