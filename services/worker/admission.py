"""The admission benchmark a worker runs at start (the seeds' ``profile_v2``).

Two figures, both measured on the device and in the dtype the worker will serve in:

- matmul throughput in GFLOPS (square matmuls, repeated for a fixed short time);
- the largest stable allocation: the biggest buffer, doubling from a floor up to a cap,
  that can be allocated with every page written (so the memory is really committed).

The worker reports them in its heartbeats; the scheduler turns them into a tier
(``services/scheduler/tiers.py``).

It runs on a thread, which a task's cancel cannot stop, so it takes a ``stop``
event the worker sets when it closes: the matmul loop and the allocation probe
(which writes its pages one slice at a time) check it and raise
``BenchmarkStopped``, so a worker stopped during its first seconds does not go
on committing memory, and its process does not wait for a probe to end.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

MATMUL_N = 512
MATMUL_SECONDS = 0.25
ALLOC_FLOOR_MB = 64
ALLOC_CAP_MB = {"cpu": 1024, "cuda": 16384}  # page faults make large CPU probes slow (~2 s per GB)
_PAGE = 4096
_SLICE = 64 * 1024 * 1024  # the allocation probe checks ``stop`` between slices of this many bytes


class BenchmarkStopped(Exception):
    """The worker closed while its benchmark ran; no figures."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise BenchmarkStopped("the admission benchmark was stopped")


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchmarkResult:
    gflops: float
    max_alloc_mb: float
    device: str
    dtype: str
    seconds: float


def matmul_gflops(
    device: str = "cpu",
    dtype: str = "float32",
    *,
    n: int = MATMUL_N,
    seconds: float = MATMUL_SECONDS,
    stop: threading.Event | None = None,
) -> float:
    import torch

    torch_dtype = getattr(torch, dtype)
    a = torch.randn((n, n), device=device).to(torch_dtype)
    b = torch.randn((n, n), device=device).to(torch_dtype)
    with torch.inference_mode():
        a @ b  # warm-up: kernels, thread pool
        _sync(device)
        runs, started = 0, time.perf_counter()
        while True:
            _check(stop)
            a @ b
            runs += 1
            _sync(device)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
    return 2.0 * n**3 * runs / elapsed / 1e9


def largest_allocation_mb(
    device: str = "cpu",
    *,
    floor_mb: int = ALLOC_FLOOR_MB,
    cap_mb: int | None = None,
    stop: threading.Event | None = None,
) -> float:
    """The largest buffer (doubling from ``floor_mb``, at most ``cap_mb``) allocated with every page touched."""
    import torch

    if cap_mb is None:
        cap_mb = ALLOC_CAP_MB["cuda" if device.startswith("cuda") else "cpu"]
    best, size = 0, floor_mb
    try:
        while size <= cap_mb and size <= _available_mb(device) * 0.5:
            try:
                buf = torch.empty(size * 1024 * 1024, dtype=torch.uint8, device=device)
                for start in range(0, buf.numel(), _SLICE):
                    _check(stop)
                    buf[start : start + _SLICE : _PAGE].fill_(1)  # a write per page commits it, not every byte
                ok = int(buf[-_PAGE].item()) == 1
            except (RuntimeError, MemoryError):
                break
            finally:
                buf = None  # freed before the next, larger try (or at a stop)
            if not ok:
                break
            best, size = size, size * 2
    finally:  # stopped part-way too: a GPU's cached blocks go back to the device
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return float(best)


def _available_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free / (1024 * 1024)
    import psutil

    return psutil.virtual_memory().available / (1024 * 1024)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run_benchmark(
    device: str = "cpu", dtype: str = "float32", *, cap_mb: int | None = None, stop: threading.Event | None = None
) -> BenchmarkResult:
    """Both figures; raises ``BenchmarkStopped`` soon after ``stop`` is set."""
    started = time.perf_counter()
    gflops = matmul_gflops(device, dtype, stop=stop)
    alloc = largest_allocation_mb(device, cap_mb=cap_mb, stop=stop)
    result = BenchmarkResult(
        gflops=round(gflops, 2),
        max_alloc_mb=alloc,
        device=device,
        dtype=dtype,
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info(
        "admission benchmark",
        extra={"gflops": result.gflops, "max_alloc_mb": alloc, "device": device, "dtype": dtype, "s": result.seconds},
    )
    return result
