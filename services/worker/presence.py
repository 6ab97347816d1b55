"""Heartbeats: who this worker is, what it serves and how busy it is, every T seconds.

``PresenceBuilder`` builds the payloads; ``PresencePublisher`` signs and publishes them
(``tether.presence.<region>.<worker>`` every T, ``tether.models.<model>.<version>.<region>``
on each model state change, followed by a heartbeat so fleet views follow at once).
Machine readings (CPU, RAM, GPU memory and utilisation) come from the HealthReporter;
the admission benchmark's figures ride along once measured.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections.abc import Callable

from nats.aio.client import Client

from schemas import ModelAnnouncement, ModelState, Presence, ServedModel
from services.worker.admission import BenchmarkResult
from services.worker.health import HealthReporter
from services.worker.model_cache import CachedModel
from tether import subjects, telemetry
from tether.envelope import PURPOSE_MODEL, PURPOSE_PRESENCE
from tether.identity import Identity
from tether.signed import envelope_headers, seal_message

log = logging.getLogger(__name__)


def device_class() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "gpu:" + torch.cuda.get_device_name(0).replace(" ", "-").lower()
    except Exception:  # torch missing or CUDA probe failing is "no GPU"
        pass
    return f"cpu:{platform.machine()}"


class PresenceBuilder:
    """Builds the heartbeat payload; ``seq`` increases by one per beat for the worker's life."""

    def __init__(
        self,
        *,
        worker_id: str,
        region: str,
        capacity: int,
        heartbeat_s: float,
        models: Callable[[], list[ServedModel]],
        queue_depth: Callable[[], int],
        draining: Callable[[], bool],
        health: HealthReporter | None = None,
        benchmark: Callable[[], BenchmarkResult | None] = lambda: None,
    ) -> None:
        self.worker_id = worker_id
        self.region = region
        self.capacity = capacity
        self.heartbeat_s = heartbeat_s
        self._models = models
        self._queue_depth = queue_depth
        self._draining = draining
        self.health = health or HealthReporter()
        self._benchmark = benchmark
        self.started_at = time.time()
        self.device_class = device_class()
        self._seq = 0

    def build(self) -> Presence:
        self._seq += 1
        h = self.health.sample()
        bench = self._benchmark()
        return Presence(
            worker_id=self.worker_id,
            region=self.region,
            device_class=self.device_class,
            capacity=self.capacity,
            queue_depth=self._queue_depth(),
            models=self._models(),
            heartbeat_s=self.heartbeat_s,
            started_at=self.started_at,
            seq=self._seq,
            ts=time.time(),
            cpu_percent=h.cpu_percent,
            mem_percent=h.mem_percent,
            draining=self._draining(),
            rss_mb=h.rss_mb,
            gpu_mem_used_mb=h.gpu_mem_used_mb,
            gpu_mem_total_mb=h.gpu_mem_total_mb,
            gpu_util_percent=h.gpu_util_percent,
            gflops=bench.gflops if bench else None,
            max_alloc_mb=bench.max_alloc_mb if bench else None,
            bench_dtype=bench.dtype if bench else None,
        )

    def announcement(self, model: ServedModel, detail: str | None = None) -> ModelAnnouncement:
        return ModelAnnouncement(
            worker_id=self.worker_id,
            model_id=model.model_id,
            version=model.version,
            region=self.region,
            task=model.task,
            state=model.state,
            ts=time.time(),
            detail=detail,
            progress=model.progress,
            size_mb=model.size_mb,
        )


class PresencePublisher:
    """Signs and publishes what ``PresenceBuilder`` builds, on this worker's connection."""

    def __init__(self, builder: PresenceBuilder, identity: Identity) -> None:
        self.builder = builder
        self.identity = identity
        self.nc: Client | None = None

    async def beat(self) -> None:
        assert self.nc is not None
        await self.nc.publish(
            subjects.presence_subject(self.builder.region, self.builder.worker_id),
            seal_message(self.identity, self.builder.build(), PURPOSE_PRESENCE),
            headers=envelope_headers(telemetry.child_headers(None)),
        )

    async def run(self) -> None:
        """A heartbeat every T seconds, on a fixed schedule (a slow beat does not shift the next)."""
        period = self.builder.heartbeat_s
        next_at = time.monotonic() + period
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            try:
                await self.beat()
            except Exception as exc:  # a missed beat must not end the loop
                log.warning("heartbeat failed", extra={"error": repr(exc)})

    async def announce(self, entry: CachedModel) -> None:
        """A model's state (loading with progress, warm, evicted, failed) on its model subject."""
        if self.nc is None or self.nc.is_closed:
            return
        ann = self.builder.announcement(entry.served(), entry.detail)
        await self.nc.publish(
            subjects.model_subject(entry.spec.model_id, entry.spec.version, self.builder.region),
            seal_message(self.identity, ann, PURPOSE_MODEL),
            headers=envelope_headers(telemetry.child_headers(None)),
        )
        if entry.state is not ModelState.LOADING:
            await self.beat()  # the fleet view follows model states through heartbeats
