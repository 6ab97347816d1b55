"""QuotaGuard: local backpressure at the worker.

Two limits, checked when an assignment arrives: how many jobs one tenant may have on
this worker at once, and how deep the worker's queue (jobs accepted and not finished)
may grow. Over either, the worker refuses the assignment with a retryable
``no_capacity`` and the scheduler places the job elsewhere. Zero means no limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from tether.errors import NoCapacity


class QuotaGuard:
    def __init__(self, *, per_tenant: int = 0, max_queue: int = 0) -> None:
        if per_tenant < 0 or max_queue < 0:
            raise ValueError("limits must be >= 0 (0: no limit)")
        self.per_tenant = per_tenant
        self.max_queue = max_queue
        self._held: Counter[str] = Counter()
        self.refused = 0

    def held(self, tenant: str) -> int:
        return self._held[tenant]

    @property
    def depth(self) -> int:
        return sum(self._held.values())

    def check(self, tenant: str, queue_depth: int | None = None) -> NoCapacity | None:
        """The refusal for one more job of ``tenant`` now, or None when it may be accepted."""
        depth = self.depth if queue_depth is None else queue_depth
        refusal: NoCapacity | None = None
        if self.max_queue and depth >= self.max_queue:
            refusal = NoCapacity(f"worker queue is full ({depth} jobs, threshold {self.max_queue})")
        elif self.per_tenant and self._held[tenant] >= self.per_tenant:
            refusal = NoCapacity(
                f"tenant {tenant!r} has {self._held[tenant]} jobs on this worker (local limit {self.per_tenant})"
            )
        if refusal is not None:
            self.refused += 1
        return refusal

    def acquire(self, tenant: str) -> None:
        self._held[tenant] += 1

    def release(self, tenant: str) -> None:
        self._held[tenant] -= 1
        if self._held[tenant] <= 0:
            del self._held[tenant]

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)
