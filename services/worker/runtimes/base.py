"""The one interface every model runtime implements.

A runtime owns one loaded model. ``load()`` and ``close()`` are blocking and
are called from a worker thread; ``run()`` is a coroutine that must never block
the event loop (heavy runtimes hand the work to their own executor thread).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class Task(StrEnum):
    """What a model does with its input."""

    GENERATE = "generate"  # text in, text out (causal LM; chat template when the model has one)
    EMBED = "embed"  # text (or list of texts) in, vector(s) out
    ECHO = "echo"  # input returned unchanged (pipeline tests and benchmarks)


#: Below this temperature decoding is greedy: dividing logits by less overflows them to inf and NaN.
MIN_TEMPERATURE = 1e-4


@dataclass(slots=True, kw_only=True)
class GenerationParams:
    """Sampling knobs. Greedy decoding unless ``temperature`` >= ``MIN_TEMPERATURE``."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    chat: bool | None = None  # None: apply the chat template when the model has one
    normalize: bool = True  # embeddings: L2-normalise the pooled vector


@dataclass(slots=True, kw_only=True)
class Delta:
    """A piece of streamed output: new text, the token ids behind it, and how many came before."""

    text: str
    token_ids: list[int]
    offset: int  # generated tokens before this piece (a resumed prefix included)


@dataclass(slots=True, kw_only=True)
class Resume:
    """What an earlier attempt already delivered to the client; generation continues after it."""

    text: str
    token_ids: list[int]


class CancelToken:
    """Set on the event loop, read by the runtime between decoding steps."""

    __slots__ = ("cancelled", "reason")

    def __init__(self) -> None:
        self.cancelled = False
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self.cancelled = True


@dataclass(slots=True, kw_only=True)
class RunRequest:
    """One unit of work for a runtime.

    ``input`` is a prompt string, a list of chat messages
    (``[{"role": "user", "content": "..."}]``) for generation, or a string /
    list of strings for embeddings. Runtimes that stream call ``on_delta`` on the
    event loop, in order, for each new piece of text; runtimes that cannot stream
    ignore it and ``resume``, and may ignore ``cancel``.
    """

    job_id: str
    input: Any
    params: GenerationParams = field(default_factory=GenerationParams)
    on_delta: Callable[[Delta], None] | None = None
    resume: Resume | None = None
    cancel: CancelToken | None = None


@dataclass(slots=True, kw_only=True)
class RunResult:
    output: Any  # str for generate/echo, list[float] or list[list[float]] for embed
    tokens_in: int = 0
    tokens_out: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    ttft_s: float | None = None  # time to first token (submitted -> first token), when measured


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
