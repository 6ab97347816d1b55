"""A bounded map whose entries expire a fixed time after they were put (monotonic clock)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringMap(Generic[K, V]):
    """Entries live ``ttl_s`` from their last ``put``; beyond ``max_items`` the oldest go first.

    Kept in put order, so expiry and the bound both drop from the front: O(1) per entry.
    """

    def __init__(self, ttl_s: float, max_items: int) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        self._items.pop(key, None)
        self._items[key] = (time.monotonic() + self.ttl_s, value)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def get(self, key: K) -> V | None:
        if not self._items:
            return None
        self.expire()
        kept = self._items.get(key)
        return kept[1] if kept is not None else None

    def pop(self, key: K) -> V | None:
        self.expire()
        kept = self._items.pop(key, None)
        return kept[1] if kept is not None else None

    def expire(self) -> None:
        now = time.monotonic()
        while self._items and next(iter(self._items.values()))[0] < now:
            self._items.popitem(last=False)
