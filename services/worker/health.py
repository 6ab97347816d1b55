"""HealthReporter: what goes into each heartbeat about the machine.

CPU and RAM from psutil; GPU memory and utilisation from NVML (pynvml) when a GPU and
the library are present, else GPU memory from torch when CUDA is available. Readings
that cannot be taken are None, never guessed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import psutil

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSample:
    cpu_percent: float
    mem_percent: float
    rss_mb: float
    gpu_mem_used_mb: float | None = None
    gpu_mem_total_mb: float | None = None
    gpu_util_percent: float | None = None


class HealthReporter:
    def __init__(self, *, gpu_index: int = 0) -> None:
        self._process = psutil.Process()
        self._gpu_index = gpu_index
        self._nvml: Any = None
        self._handle: Any = None
        self._torch_cuda = False
        psutil.cpu_percent(None)  # prime the counter so the first reading is meaningful
        self._open_gpu()

    def _open_gpu(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self._gpu_index)
            self._nvml = pynvml
            return
        except Exception:  # no library, no driver, or no GPU at that index
            self._nvml = None
        try:
            import torch

            self._torch_cuda = bool(torch.cuda.is_available())
        except Exception:
            self._torch_cuda = False

    @property
    def has_gpu(self) -> bool:
        return self._nvml is not None or self._torch_cuda

    def sample(self) -> HealthSample:
        used = total = util = None
        if self._nvml is not None:
            try:
                mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                used, total = mem.used / MB, mem.total / MB
                util = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            except Exception as exc:  # a flaky driver read is a missing reading, not a crash
                log.debug("NVML read failed", extra={"error": repr(exc)})
        elif self._torch_cuda:
            try:
                import torch

                free, total_bytes = torch.cuda.mem_get_info(self._gpu_index)
                used, total = (total_bytes - free) / MB, total_bytes / MB
            except Exception as exc:  # same as NVML: a failed read is a missing reading
                log.debug("torch CUDA memory read failed", extra={"error": repr(exc)})
        return HealthSample(
            cpu_percent=psutil.cpu_percent(None),
            mem_percent=psutil.virtual_memory().percent,
            rss_mb=round(self._process.memory_info().rss / MB, 1),
            gpu_mem_used_mb=None if used is None else round(used, 1),
            gpu_mem_total_mb=None if total is None else round(total, 1),
            gpu_util_percent=util,
        )

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
