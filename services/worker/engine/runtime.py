"""EngineRuntime: a transformers model served through the batching engine.

Generation goes through ``GenerationEngine`` (continuous batching, streaming, resume,
cancellation); embeddings through ``EmbeddingBatcher``. Loading, prompt handling and
validation are the plain ``TransformersRuntime``'s, which stays available as the naive
one-request-at-a-time runtime (``engine=naive`` in a model spec) the benchmark compares
against.
"""

from __future__ import annotations

import asyncio

import torch

from services.worker.runtimes.base import CancelToken, RunRequest, RunResult, Task
from services.worker.runtimes.transformers_runtime import TransformersRuntime, check_params, embed_input
from tether import errors

from .embedding import DEFAULT_MAX_TEXTS, EmbeddingBatcher
from .generation import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_S, GenerationEngine
from .sampling import make_generator
from .sequence import Sequence
from .textstream import TextStream


class EngineRuntime:
    def __init__(
        self,
        inner: TransformersRuntime,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        self.inner = inner
        self.model_id, self.version, self.task = inner.model_id, inner.version, inner.task
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.engine: GenerationEngine | None = None
        self.embedder: EmbeddingBatcher | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        self.inner.load()
        if self.task is Task.GENERATE:
            tokenizer = self.inner.tokenizer
            self.engine = GenerationEngine(
                self.inner.model,
                pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
                prepare=self._prepare,
                max_batch=self.max_batch,
                max_wait_s=self.max_wait_s,
                name=self.model_id,
            )
            self.engine.start()
        else:
            self.embedder = EmbeddingBatcher(
                self.inner.embed_pooled,
                call=self.inner.call,
                max_texts=max(self.max_batch, DEFAULT_MAX_TEXTS),
                max_wait_s=self.max_wait_s,
                name=self.model_id,
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.engine is not None:
            self.engine.stop()
        # The engine holds ``self._prepare`` (and so this runtime): dropping it here breaks that
        # cycle, so the weights are freed now, not at some later full garbage collection.
        self.engine = self.embedder = None
        self.inner.close()

    @property
    def depth(self) -> int:
        """Requests queued or running in this runtime."""
        if self.engine is not None:
            return self.engine.depth
        return self.embedder.depth if self.embedder is not None else 0

    # ------------------------------------------------------------------ requests

    async def run(self, request: RunRequest) -> RunResult:
        if self._closed or (self.engine is None and self.embedder is None):
            raise errors.WorkerFailed(
                f"model {self.model_id}:{self.version} is not loaded", job_id=request.job_id
            )
        if self.embedder is not None:
            texts, single = embed_input(request)
            return await self.embedder.embed(texts, single=single, normalize=request.params.normalize)
        assert self.engine is not None
        prompt = self.inner.prompt_of(request)
        check_params(request)
        loop = asyncio.get_running_loop()
        seq = Sequence(
            job_id=request.job_id,
            prompt=prompt,
            params=request.params,
            cancel=request.cancel or CancelToken(),
            resume_ids=list(request.resume.token_ids) if request.resume else [],
            resume_text=request.resume.text if request.resume else "",
            loop=loop,
            future=loop.create_future(),
            on_delta=request.on_delta,
        )
        self.engine.submit(seq)
        assert seq.future is not None and seq.cancel is not None
        try:
            return await seq.future
        except asyncio.CancelledError:
            seq.cancel.cancel("the caller stopped waiting")  # frees the batch slot at the next step
            raise

    def _prepare(self, seq: Sequence) -> None:
        """Encode the prompt and set the sequence's limits (engine thread)."""
        inner = self.inner
        ids = [int(t) for t in inner.encode(seq.prompt)["input_ids"][0].tolist()]
        seq.prompt_ids = ids
        room = inner.context_left(len(ids) + len(seq.resume_ids), seq.job_id)
        seq.max_new = min(seq.params.max_new_tokens, len(seq.resume_ids) + room)
        seq.generated = list(seq.resume_ids)
        seq.eos_ids = frozenset(inner.eos_ids())
        seq.stream = TextStream(
            inner.tokenizer, seq.params.stop, prefix_ids=seq.resume_ids, delivered_text=seq.resume_text
        )
        seq.generator = make_generator(seq.params)
        if seq.generator is not None and seq.resume_ids and seq.params.seed is not None:
            # the resumed tokens were drawn by an earlier attempt: skip their draws (one per token,
            # each as wide as the vocabulary) so the rest continues that attempt's random stream
            # (only a seeded stream can be continued; an unseeded one was never reproducible)
            head = inner.model.get_output_embeddings()
            vocab = head.weight.shape[0] if head is not None else int(inner.model.config.vocab_size)
            for _ in seq.resume_ids:
                torch.multinomial(torch.ones(vocab), 1, generator=seq.generator)

