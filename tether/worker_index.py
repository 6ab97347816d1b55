"""Workers serving one model: the fleet view's per-model index."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.fleet import WorkerEntry


class WorkerIndex:
    """Workers serving one model: O(1) add and remove, and random samples without copying."""

    __slots__ = ("_entries", "_pos")

    def __init__(self) -> None:
        self._entries: list[WorkerEntry] = []
        self._pos: dict[str, int] = {}

    def put(self, entry: WorkerEntry) -> None:
        i = self._pos.get(entry.worker_id)
        if i is None:
            self._pos[entry.worker_id] = len(self._entries)
            self._entries.append(entry)
        else:
            self._entries[i] = entry

    def discard(self, worker_id: str) -> None:
        i = self._pos.pop(worker_id, None)
        if i is None:
            return
        last = self._entries.pop()
        if i < len(self._entries):
            self._entries[i] = last
            self._pos[last.worker_id] = i

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[WorkerEntry]:
        return list(self._entries)

    def sample(self, k: int, rng: random.Random) -> list[WorkerEntry]:
        n = len(self._entries)
        if n <= k:
            return list(self._entries)
        return [self._entries[i] for i in rng.sample(range(n), k)]
