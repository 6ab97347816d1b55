"""Refuse at start what this machine cannot do, with a message that says why.

``--quantize 8bit|4bit`` loads weights through bitsandbytes, which needs a CUDA GPU:
without one the worker stops before serving anything (no silent fallback to full
precision). A ``--dtype`` the device cannot compute in is refused the same way.
"""

from __future__ import annotations

import importlib.util
from functools import cache

from services.worker.runtimes.catalog import ModelSpec
from tether import errors


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install is "no CUDA"
        return False


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


@cache
def dtype_works(dtype: str, device: str) -> bool:
    """True when a small matmul in ``dtype`` runs on ``device``."""
    import torch

    try:
        a = torch.ones((8, 8), dtype=getattr(torch, dtype), device=device)
        return bool(torch.isfinite((a @ a).float()).all())
    except (RuntimeError, TypeError, AttributeError):
        return False


def check_spec(spec: ModelSpec) -> None:
    """Raise ``InvalidRequest`` naming the option when ``spec`` cannot run here."""
    if spec.runtime != "transformers":
        return
    device = resolve_device(spec.device)
    if spec.device == "cuda" and not cuda_available():
        raise errors.InvalidRequest(
            f"{spec.model_id}: device=cuda but this machine has no CUDA GPU", field="device"
        )
    if spec.quantize:
        if not cuda_available():
            raise errors.InvalidRequest(
                f"{spec.model_id}: --quantize {spec.quantize} loads weights through bitsandbytes, which needs a "
                "CUDA GPU; this machine has none. Drop --quantize (or use --dtype bfloat16 to halve memory).",
                field="quantize",
            )
        if spec.device == "cpu":
            raise errors.InvalidRequest(
                f"{spec.model_id}: quantize={spec.quantize} needs device=cuda or auto, not cpu", field="quantize"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise errors.InvalidRequest(
                f"{spec.model_id}: --quantize needs bitsandbytes: pip install 'tether[gpu]'", field="quantize"
            )
    if spec.dtype not in ("auto", "float32") and not dtype_works(spec.dtype, device):
        raise errors.InvalidRequest(
            f"{spec.model_id}: dtype {spec.dtype} is not supported on {device}", field="dtype"
        )
