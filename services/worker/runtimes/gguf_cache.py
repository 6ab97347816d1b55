"""A GGUF model dequantised once is cached as a plain checkpoint, so later loads skip the conversion."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Marks a converted checkpoint as complete (written last, inside the directory renamed into place).
CACHE_DONE = ".tether-converted"


def _gguf_weights_packed(model: Any) -> bool:
    """True when transformers kept GGUF blocks packed (the ``kernels`` path): nothing dense to save."""
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = getattr(quantizer, "quantization_config", None)
    return bool(getattr(quantizer, "supported", False)) and not getattr(qconfig, "dequantize", True)


def save_converted(tokenizer: Any, model: Any, target: Path) -> None:
    """Save a dequantised GGUF model as a plain checkpoint, atomically; best effort.

    transformers 5 leaves the (spent) GGUF quantizer on the model and refuses to save it, so it
    is detached for the save: the weights are already dense tensors.
    """
    if _gguf_weights_packed(model):
        return
    tmp = target.with_name(f"{target.name}.tmp-{threading.get_ident()}")
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    try:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        (tmp / CACHE_DONE).touch()
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except (OSError, ValueError) as exc:
        log.warning("could not cache converted GGUF checkpoint at %s: %s", target, exc)
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        model.hf_quantizer = quantizer
        if qconfig is not None:
            model.config.quantization_config = qconfig
