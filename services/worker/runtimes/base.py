"""The one interface every model runtime implements.

A runtime owns one loaded model. ``load()`` and ``close()`` are blocking and
are called from a worker thread; ``run()`` is a coroutine that must never block
the event loop (heavy runtimes hand the work to their own executor thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class Task(StrEnum):
    """What a model does with its input."""

    GENERATE = "generate"  # text in, text out (causal LM; chat template when the model has one)
    EMBED = "embed"  # text (or list of texts) in, vector(s) out
    ECHO = "echo"  # input returned unchanged (pipeline tests and benchmarks)


@dataclass(slots=True, kw_only=True)
class GenerationParams:
    """Sampling knobs. Greedy decoding unless ``temperature`` > 0 (or do_sample)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    chat: bool | None = None  # None: apply the chat template when the model has one
    normalize: bool = True  # embeddings: L2-normalise the pooled vector


@dataclass(slots=True, kw_only=True)
class RunRequest:
    """One unit of work for a runtime.

    ``input`` is a prompt string, a list of chat messages
    (``[{"role": "user", "content": "..."}]``) for generation, or a string /
    list of strings for embeddings.
    """

    job_id: str
    input: Any
    params: GenerationParams = field(default_factory=GenerationParams)


@dataclass(slots=True, kw_only=True)
class RunResult:
    output: Any  # str for generate/echo, list[float] or list[list[float]] for embed
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str = "stop"  # "stop" | "length"


@runtime_checkable
class ModelRuntime(Protocol):
    model_id: str
    version: str
    task: Task

    def load(self) -> None:
        """Load weights (blocking; run in a thread by the worker)."""

    async def run(self, request: RunRequest) -> RunResult:
        """Run one request without blocking the event loop."""

    def close(self) -> None:
        """Free the model (blocking)."""
