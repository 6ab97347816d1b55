"""TransformersRuntime: causal-LM generation and mean-pooled embeddings via Hugging Face transformers.

All torch work (loading included) runs on one dedicated thread owned by the runtime, so
``run()`` never blocks the event loop and the model is never used from two threads at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tether import errors

from .base import MIN_TEMPERATURE, GenerationParams, RunRequest, RunResult, Task
from .gguf_cache import CACHE_DONE, save_converted
from .weights import merge_adapter, quantization_kwargs

T = TypeVar("T")
_log = logging.getLogger(__name__)

_DTYPES = ("float32", "float16", "bfloat16", "auto")
_DEVICES = ("cpu", "cuda", "auto")

# Sampling draws from torch's process-wide RNG. Several runtimes (each with its own thread) may
# live in one process, so every sampled generation holds this lock from manual_seed to the end.
_RNG_LOCK = threading.Lock()


class TransformersRuntime:
    """One Hugging Face model (local dir or hub id, optionally a GGUF file) for GENERATE or EMBED."""

    def __init__(
        self,
        model_id: str,
        version: str,
        task: Task,
        source: str | Path,
        *,
        gguf_file: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        convert_cache: str | Path | None = None,
        adapter: str | None = None,
        quantize: str | None = None,
    ) -> None:
        if task not in (Task.GENERATE, Task.EMBED):
            raise errors.InvalidRequest(f"TransformersRuntime cannot serve task {task!r}", field="task")
        if dtype not in _DTYPES:
            raise errors.InvalidRequest(f"dtype must be one of {_DTYPES}, not {dtype!r}", field="dtype")
        if device not in _DEVICES:
            raise errors.InvalidRequest(f"device must be one of {_DEVICES}, not {device!r}", field="device")
        self.model_id = model_id
        self.version = version
        self.task = task
        self.source = str(source)
        self.gguf_file = gguf_file
        self.dtype = dtype
        self.device = device
        self.adapter = adapter  # peft LoRA adapter merged into the weights on load
        self.quantize = quantize  # "8bit" | "4bit" (bitsandbytes, CUDA)
        # GGUF loading re-parses metadata and dequantises on every load (~35 s for SmolLM2-135M on
        # CPU); with a cache dir the converted checkpoint is saved once and reloaded in ~1 s.
        self.convert_cache = Path(convert_cache) if convert_cache else None
        self.tokenizer: Any = None
        self.model: Any = None
        self.max_seq_length: int | None = None  # embeddings: sentence-transformers' limit, if given
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"runtime-{model_id}")
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Load tokenizer and weights on the runtime's own thread (blocking)."""
        self._executor.submit(self._load).result()

    def close(self) -> None:
        """Drop the model and stop the thread (blocking, idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._unload).result()
        self._executor.shutdown(wait=True)

    async def run(self, request: RunRequest) -> RunResult:
        if self._closed or self.model is None:
            raise errors.WorkerFailed(
                f"model {self.model_id}:{self.version} is not loaded", job_id=request.job_id
            )
        if self.task is Task.EMBED:
            texts, single = embed_input(request)
            return await self.call(self._embed, texts, single, request.params)
        prompt = self.prompt_of(request)
        check_params(request)
        return await self.call(self._generate, prompt, request.params, request.job_id)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ loading (runtime thread)

    def _load(self) -> None:
        cached = self._converted_dir()
        if cached is not None and (cached / CACHE_DONE).exists():
            tokenizer, model = self._from_pretrained(str(cached), {})
        else:
            kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
            tokenizer, model = self._from_pretrained(self.source, kwargs)
            if cached is not None:
                save_converted(tokenizer, model, cached)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        if not self.quantize:  # bitsandbytes places quantized weights itself
            model.to(self._torch_device())
        if self.adapter:
            model = merge_adapter(model, self.adapter)
        model.eval()
        self.tokenizer, self.model = tokenizer, model
        self.max_seq_length = _sentence_transformers_max_len(self.source)

    def _from_pretrained(self, source: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model_cls = AutoModelForCausalLM if self.task is Task.GENERATE else AutoModel
        dtype: Any = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        if self.quantize:
            kwargs = {**kwargs, **quantization_kwargs(self.quantize, dtype)}
        return tokenizer, model_cls.from_pretrained(source, dtype=dtype, **kwargs)

    def _converted_dir(self) -> Path | None:
        """Where this GGUF file's converted checkpoint lives, if caching applies (local files only)."""
        if self.convert_cache is None or not self.gguf_file:
            return None
        gguf = Path(self.source) / self.gguf_file
        if not gguf.is_file():
            return None
        import transformers

        stat = gguf.stat()
        ident = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.dtype}|{transformers.__version__}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return self.convert_cache / f"{gguf.stem}-{digest}"

    def _torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _unload(self) -> None:
        self.model = None
        self.tokenizer = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ generation

    def _uses_chat(self, params: GenerationParams) -> bool:
        return params.chat is not False and bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_of(self, request: RunRequest) -> str | list[dict[str, str]]:
        """Validate the input; return a raw prompt string or chat messages."""
        value = request.input
        chat = self._uses_chat(request.params)
        if isinstance(value, str):
            return [{"role": "user", "content": value}] if chat else value
        if isinstance(value, list) and value and all(_is_message(m) for m in value):
            if not chat:
                raise errors.InvalidRequest(
                    "input: chat messages need a model with a chat template (and params.chat not false)",
                    job_id=request.job_id,
                    field="input",
                )
            return value
        raise errors.InvalidRequest(
            "input must be a prompt string or a non-empty list of {'role', 'content'} messages "
            f"for generation, got {type(value).__name__}",
            job_id=request.job_id,
            field="input",
        )

    def encode(self, prompt: str | list[dict[str, str]]) -> Any:
        if isinstance(prompt, str):
            enc = self.tokenizer(prompt, return_tensors="pt")
        else:
            try:
                enc = self.tokenizer.apply_chat_template(
                    prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
            except Exception as exc:  # a template's raise_exception() (jinja2 TemplateError), ValueError
                # The conversation, not the worker, is at fault: a final error for this request only,
                # never a retryable failure that would be retried, dead-lettered and trip the breaker.
                raise errors.InvalidRequest(
                    f"input: the model's chat template refused these messages: {exc}", field="input"
                ) from None
        if enc["input_ids"].shape[-1] == 0:  # e.g. only whitespace, for a tokenizer that drops it
            raise errors.InvalidRequest("the input has no tokens for this model", field="input")
        return {k: v.to(self.model.device) for k, v in enc.items()}

    def _generate(
        self, prompt: str | list[dict[str, str]], params: GenerationParams, job_id: str | None = None
    ) -> RunResult:
        import torch

        enc = self.encode(prompt)
        tokens_in = int(enc["input_ids"].shape[1])
        max_new = min(params.max_new_tokens, self.context_left(tokens_in, job_id))
        kwargs = self._generate_kwargs(params, max_new)
        if params.stop:
            kwargs["stopping_criteria"] = _stop_criteria(self.tokenizer, tokens_in, params.stop)
        with torch.inference_mode():
            if kwargs["do_sample"]:
                with _RNG_LOCK:
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    out = self.model.generate(**enc, **kwargs)
            else:
                out = self.model.generate(**enc, **kwargs)
        new_ids = out[0, tokens_in:].tolist()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        text, hit_stop = _trim_at_stop(text, params.stop)
        ended_on_eos = bool(new_ids) and new_ids[-1] in self.eos_ids()
        finish = "length" if len(new_ids) >= max_new and not (hit_stop or ended_on_eos) else "stop"
        return RunResult(output=text, tokens_in=tokens_in, tokens_out=len(new_ids), finish_reason=finish)

    def _generate_kwargs(self, params: GenerationParams, max_new: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "pad_token_id": self.tokenizer.pad_token_id,
            # the ids the engine stops on, the tokenizer's eos included (None: a model without any)
            "eos_token_id": sorted(self.eos_ids()) or None,
            "do_sample": params.temperature >= MIN_TEMPERATURE,  # below it, greedy (as in the engine)
        }
        if kwargs["do_sample"]:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:  # silence warnings from sampling knobs a model's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def context_left(self, tokens_in: int, job_id: str | None) -> int:
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit is None:
            return 1 << 30
        if tokens_in >= limit:
            raise errors.InvalidRequest(
                f"input is {tokens_in} tokens; the model's context is {limit}", job_id=job_id, field="input"
            )
        return limit - tokens_in

    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    # ------------------------------------------------------------------ embeddings

    def _embed(self, texts: list[str], single: bool, params: GenerationParams) -> RunResult:
        if not texts:
            return RunResult(output=[], tokens_in=0)
        pooled, counts = self.embed_pooled(texts, normalize=params.normalize)
        vectors: list[list[float]] = pooled.float().cpu().tolist()
        return RunResult(output=vectors[0] if single else vectors, tokens_in=sum(counts))

    def embed_pooled(self, texts: list[str], *, normalize: bool) -> tuple[Any, list[int]]:
        """Mean-pooled vectors [texts, dim] (L2-normalised if asked) and each text's token count."""
        import torch

        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self._embed_max_length(), return_tensors="pt"
        )
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled, [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()]

    def _embed_max_length(self) -> int:
        limits = [
            getattr(self.model.config, "max_position_embeddings", None) or 512,
            getattr(self.tokenizer, "model_max_length", None),
            self.max_seq_length,
        ]
        return min(int(n) for n in limits if isinstance(n, int) and n > 0)


# ---------------------------------------------------------------------- helpers


def _is_message(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("role"), str)
        and isinstance(value.get("content"), str)
    )


def _sentence_transformers_max_len(source: str) -> int | None:
    """``max_seq_length`` from a local sentence-transformers dir (the length it was trained at)."""
    path = Path(source) / "sentence_bert_config.json"
    try:
        value = json.loads(path.read_text()).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def embed_input(request: RunRequest) -> tuple[list[str], bool]:
    value = request.input
    if isinstance(value, str):
        return [value], True
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value), False
    raise errors.InvalidRequest(
        f"input must be a string or a list of strings for embeddings, got {type(value).__name__}",
        job_id=request.job_id,
        field="input",
    )


def check_params(request: RunRequest) -> None:
    params = request.params
    if params.max_new_tokens < 1:
        raise errors.InvalidRequest(
            "params.max_new_tokens must be >= 1", job_id=request.job_id, field="params.max_new_tokens"
        )
    if not all(isinstance(s, str) and s for s in params.stop):
        raise errors.InvalidRequest(
            "params.stop must be a list of non-empty strings", job_id=request.job_id, field="params.stop"
        )


def _stop_criteria(tokenizer: Any, prompt_len: int, stops: list[str]) -> Any:
    """Stop once the decoded new text contains a stop string.

    transformers' own ``stop_strings`` probes the vocabulary with a fixed prefix and fails on
    vocabularies that cannot spell it (word-level ones), so decode-and-search it is.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            text = tokenizer.decode(input_ids[0, prompt_len:], skip_special_tokens=True)
            hit = any(stop in text for stop in stops)
            return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopOnStrings()])


def _trim_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; report whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
