"""The replay guard of signed envelopes: (public key, nonce) pairs remembered until they expire."""

from __future__ import annotations

import heapq
from enum import Enum

__all__ = ["Added", "NonceCache"]

_SIGNER_BYTES = 32  # a key is the signer's Ed25519 public key followed by the nonce


class Added(Enum):
    """What ``NonceCache.add`` did with a key."""

    RECORDED = "recorded"
    REPLAYED = "replayed"  # already remembered: refuse the envelope
    FULL = "full"  # the signer's share (or the whole cache) is used up: refuse, never forget a nonce early


class NonceCache:
    """Remembers (public key, nonce) pairs until they expire; O(log n) per message.

    Entries expire at ``timestamp + skew`` (after that the envelope is stale anyway), in
    expiry order (a heap): an envelope timestamped ahead of the others never holds back
    the expiry of those that arrived after it.
    The cache fails closed: it never drops a live entry to make room, since a dropped
    nonce could be replayed. Instead each signer may hold at most ``max_per_signer``
    live entries (a quarter of the cache by default), and past that, or past
    ``max_entries`` in all, new envelopes are refused (``Added.FULL``, counted in
    ``refused``) until entries expire. A flooding signer, even an allowed one, so
    refuses only its own traffic, and three other signers cannot push the cache
    out of room for the rest.
    """

    __slots__ = ("_expiry", "_order", "_per_signer", "max_entries", "max_per_signer", "refused")

    def __init__(self, max_entries: int = 2_000_000, *, max_per_signer: int | None = None) -> None:
        self._expiry: dict[bytes, float] = {}
        self._order: list[tuple[float, bytes]] = []  # a heap: the next to expire first
        self._per_signer: dict[bytes, int] = {}
        self.max_entries = max_entries
        self.max_per_signer = max_per_signer if max_per_signer is not None else max(1, max_entries // 4)
        self.refused = 0

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: bytes) -> bool:
        return key in self._expiry

    def held_by(self, signer: bytes) -> int:
        """Live entries of ``signer`` (a public key)."""
        return self._per_signer.get(signer, 0)

    def expire(self, now: float) -> None:
        """Drop entries whose expiry is before ``now`` (soonest first)."""
        order, expiry, per_signer = self._order, self._expiry, self._per_signer
        while order and order[0][0] < now:
            key = heapq.heappop(order)[1]
            if expiry.pop(key, None) is not None:
                signer = key[:_SIGNER_BYTES]
                left = per_signer[signer] - 1
                if left:
                    per_signer[signer] = left
                else:
                    del per_signer[signer]

    def add(self, key: bytes, expires_at: float, now: float) -> Added:
        """Record ``key`` (signer public key + nonce) unless it is a replay or there is no room for it."""
        self.expire(now)
        if key in self._expiry:
            return Added.REPLAYED
        signer = key[:_SIGNER_BYTES]
        held = self._per_signer.get(signer, 0)
        if held >= self.max_per_signer or len(self._expiry) >= self.max_entries:
            self.refused += 1
            return Added.FULL
        self._per_signer[signer] = held + 1
        self._expiry[key] = expires_at
        heapq.heappush(self._order, (expires_at, key))
        return Added.RECORDED
