"""One generation request inside the engine: its ids, limits, text and how it ended."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from services.worker.runtimes.base import CancelToken, Delta, GenerationParams, RunResult

from .textstream import TextStream


@dataclass(eq=False, slots=True, kw_only=True)
class Sequence:
    """Mutable state of one request; touched only by the engine thread once submitted."""

    job_id: str
    prompt: Any  # raw prompt string or chat messages; encoded on the engine thread
    params: GenerationParams
    cancel: CancelToken | None = None
    resume_ids: list[int] = field(default_factory=list)
    resume_text: str = ""
    # Filled in by the engine when the request is admitted.
    prompt_ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    max_new: int = 0
    eos_ids: frozenset[int] = frozenset()
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    finish_reason: str | None = None
    # Event-loop side: where deltas and the outcome go.
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[RunResult] | None = None
    on_delta: Any = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.cancelled

    def context_ids(self) -> list[int]:
        """What the model reads before producing the next token."""
        return self.prompt_ids + self.generated

    def append(self, token: int) -> Delta:
        """Record one generated token; decide whether the sequence is finished."""
        assert self.stream is not None
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        offset = len(self.generated)
        self.generated.append(token)
        text = self.stream.push(self.generated)
        if self.check_done():
            text += self.stream.finish()
        return Delta(text=text, token_ids=[token], offset=offset)

    def check_done(self) -> bool:
        """Set ``finish_reason`` if the tokens so far end the sequence; True when finished."""
        assert self.stream is not None
        if self.generated and (self.generated[-1] in self.eos_ids or self.stream.stopped):
            self.finish_reason = "stop"
        elif len(self.generated) >= self.max_new:
            self.finish_reason = "length"
        return self.finish_reason is not None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def result(self) -> RunResult:
        assert self.stream is not None and self.finish_reason is not None
        return RunResult(
            output=self.stream.text,
            tokens_in=len(self.prompt_ids),
            tokens_out=len(self.generated),
            finish_reason=self.finish_reason,
            ttft_s=None if self.first_token_at is None else self.first_token_at - self.submitted_at,
        )
