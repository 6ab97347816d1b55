"""Measuring memory: what a loaded model holds, what the machine can give, what a load will need.

Budgets and model sizes are measured, not guessed: a loaded model's size is the bytes of
its parameters and buffers; the default budget is a share of the memory available when
the worker starts (RAM on CPU, free VRAM on a GPU). Before a first load, only the files
on disk are known, so the estimate comes from them and is replaced by the measurement
once the model is warm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil

from services.worker.runtimes.catalog import ModelSpec

BUDGET_SHARE = 0.8  # of the memory available at start
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_DTYPE_BYTES = {"float32": 4, "auto": 4, "bfloat16": 2, "float16": 2}
_GGUF_BITS = 4.5  # a typical quantised GGUF weight (Q4_x); dequantised on load


def torch_module(runtime: Any) -> Any | None:
    """The torch model inside a runtime (engine runtimes wrap the transformers runtime)."""
    inner = getattr(runtime, "inner", runtime)
    return getattr(inner, "model", None)


def model_bytes(runtime: Any) -> int:
    """Bytes held by a loaded runtime's parameters and buffers (shared tensors counted once)."""
    model = torch_module(runtime)
    if model is None:
        return 0
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        ptr = tensor.data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        total += tensor.numel() * tensor.element_size()
    return total


def estimate_bytes(spec: ModelSpec) -> int:
    """What loading ``spec`` will take, from its files on disk (0 when unknown, e.g. a hub id)."""
    if spec.runtime != "transformers":
        return 0
    source = Path(spec.source)
    if not source.is_dir():
        return 0
    per_weight = _DTYPE_BYTES.get(spec.dtype, 4)
    if spec.gguf_file:
        gguf = source / spec.gguf_file
        return int(gguf.stat().st_size * per_weight * 8 / _GGUF_BITS) if gguf.is_file() else 0
    files = [p for p in source.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
    return sum(p.stat().st_size for p in files)


def default_budget(device: str) -> int:
    """A share of the memory available now: free VRAM on CUDA, available RAM otherwise."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free * BUDGET_SHARE)
    return int(psutil.virtual_memory().available * BUDGET_SHARE)


def memory_in_use(device: str) -> int:
    """Bytes this process holds now (allocated VRAM on CUDA, resident RAM otherwise)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.memory_allocated())
    return int(psutil.Process().memory_info().rss)
