"""Model runtimes: the interface, the echo runtime, the transformers runtime and the catalogue.

``TransformersRuntime`` is imported lazily (it pulls in torch/transformers on first use), so
importing this package stays cheap for processes that only need the interface or echo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import GenerationParams, ModelRuntime, RunRequest, RunResult, Task
from .catalog import BUILTIN_IDS, ModelSpec, build_runtime, builtin_spec, builtin_specs, parse_model_spec
from .echo import EchoRuntime

if TYPE_CHECKING:
    from .transformers_runtime import TransformersRuntime

__all__ = [
    "BUILTIN_IDS",
    "EchoRuntime",
    "GenerationParams",
    "ModelRuntime",
    "ModelSpec",
    "RunRequest",
    "RunResult",
    "Task",
    "TransformersRuntime",
    "build_runtime",
    "builtin_spec",
    "builtin_specs",
    "parse_model_spec",
]


def __getattr__(name: str) -> Any:
    if name == "TransformersRuntime":
        from .transformers_runtime import TransformersRuntime

        return TransformersRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
