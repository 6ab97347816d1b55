"""Ways of loading weights beyond the plain checkpoint: bitsandbytes quantization, LoRA adapters."""

from __future__ import annotations

from typing import Any

from tether import errors


def quantization_kwargs(mode: str, dtype: Any) -> dict[str, Any]:
    """from_pretrained arguments for bitsandbytes 8-bit or 4-bit weights on the first GPU."""
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    elif mode == "4bit":
        compute = dtype if dtype != "auto" else None
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute)
    else:
        raise errors.InvalidRequest(f"quantize must be 8bit or 4bit, not {mode!r}", field="quantize")
    return {"quantization_config": config, "device_map": {"": 0}}


def merge_adapter(model: Any, adapter: str) -> Any:
    """Apply a peft LoRA adapter and fold it into the base weights (a plain model comes back)."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise errors.InvalidRequest(
            "adapter= needs the peft package: pip install 'tether[models]'", field="adapter"
        ) from exc
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()

