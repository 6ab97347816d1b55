"""Queue depth per model, read from the JOBS stream and shared by every request for a moment.

A job stays in JOBS (a work queue) until a scheduler acknowledges it after its final
outcome, so the per-subject message count of ``tether.jobs.<tenant>.<model>.<version>``
is the number of accepted jobs of that model not yet finished: queued plus running.
One ``STREAM.INFO`` with a subject filter answers for every model at once; the answer is
reused for ``ttl_s`` so a burst of requests costs one API call.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from nats.js import JetStreamContext

from services.gateway.config import ModelKey
from streams import JOBS
from tether import subjects


def depths_by_model(subject_counts: dict[str, int]) -> dict[ModelKey, int]:
    """Sum per-subject counts of ``tether.jobs.<tenant>.<model>.<version>`` by (model, version)."""
    out: Counter[ModelKey] = Counter()
    for subject, count in subject_counts.items():
        try:
            _, model, version = subjects.parse_job_subject(subject)
        except Exception:
            continue
        out[(model, version)] += count
    return dict(out)


class Backlog:
    def __init__(self, js: JetStreamContext, *, ttl_s: float = 0.25) -> None:
        self._js = js
        self._ttl_s = ttl_s
        self._depths: dict[ModelKey, int] = {}
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def depths(self) -> dict[ModelKey, int]:
        async with self._lock:
            if time.monotonic() - self._at > self._ttl_s:
                info = await self._js.stream_info(JOBS, subjects_filter=subjects.JOBS_ALL)
                self._depths = depths_by_model(dict(info.state.subjects or {}))
                self._at = time.monotonic()
            return self._depths

    async def depth(self, model: ModelKey) -> int:
        return (await self.depths()).get(model, 0)
