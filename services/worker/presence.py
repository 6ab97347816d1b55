"""Heartbeats: who this worker is, what it serves and how busy it is, every T seconds.

The HealthReporter part: CPU and RAM from psutil go into each heartbeat.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import psutil

from schemas import ModelAnnouncement, Presence, ServedModel


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
    ) -> None:
        self.worker_id = worker_id
        self.region = region
        self.capacity = capacity
        self.heartbeat_s = heartbeat_s
        self._models = models
        self._queue_depth = queue_depth
        self._draining = draining
        self.started_at = time.time()
        self.device_class = device_class()
        self._seq = 0
        psutil.cpu_percent(None)  # prime the counter so the first reading is meaningful

    def build(self) -> Presence:
        self._seq += 1
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
            cpu_percent=psutil.cpu_percent(None),
            mem_percent=psutil.virtual_memory().percent,
            draining=self._draining(),
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
        )
