"""The built-in real models: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2, loaded offline."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.worker.runtimes import GenerationParams, RunRequest, Task, TransformersRuntime, build_runtime
from services.worker.runtimes.catalog import builtin_spec
from tests.conftest import first_load_lock
from tether import errors


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def _loaded(model_id: str, convert_cache: Path | None = None) -> Iterator[TransformersRuntime]:
    try:
        spec = builtin_spec(model_id, convert_cache=str(convert_cache) if convert_cache else None)
    except errors.ModelUnknown as exc:
        pytest.skip(str(exc))
    runtime = build_runtime(replace(spec, engine="naive"))  # the plain runtime; the engine has its own tests
    assert isinstance(runtime, TransformersRuntime)
    started = time.perf_counter()
    with first_load_lock(convert_cache) if convert_cache else contextlib.nullcontext():
        runtime.load()
    print(f"\n{model_id} loaded in {time.perf_counter() - started:.1f}s")
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def smollm2(gguf_cache: Path) -> Iterator[TransformersRuntime]:
    yield from _loaded("smollm2-135m-instruct", gguf_cache)  # converts the GGUF, unless a test before did


@pytest.fixture(scope="module")
def minilm() -> Iterator[TransformersRuntime]:
    yield from _loaded("all-minilm-l6-v2")


def _req(value: object, **params: object) -> RunRequest:
    return RunRequest(job_id="m1", input=value, params=GenerationParams(**params))  # type: ignore[arg-type]


def _converted_dirs(cache: Path) -> list[str]:
    return [p.name for p in cache.iterdir() if p.is_dir()]


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# ---------------------------------------------------------------------- SmolLM2 (GGUF, ~30-40 s to load)


@pytest.mark.slow
async def test_smollm2_knows_the_capital_of_france(smollm2: TransformersRuntime) -> None:
    assert smollm2.task is Task.GENERATE
    started = time.perf_counter()
    result = await smollm2.run(_req("What is the capital of France?", max_new_tokens=24))
    print(f"answer in {time.perf_counter() - started:.2f}s: {result.output!r}")
    assert "Paris" in result.output
    assert "<|im_start|>" not in result.output and "What is the capital" not in result.output
    assert result.tokens_in > 10  # chat template (system + user turn) was applied
    assert 0 < result.tokens_out <= 24
    assert result.finish_reason == "stop"  # ended on <|im_end|>


@pytest.mark.slow
async def test_smollm2_greedy_is_deterministic_and_honours_length(smollm2: TransformersRuntime) -> None:
    messages = [{"role": "user", "content": "Count from one to twenty in words."}]
    a = await smollm2.run(_req(messages, max_new_tokens=6))
    b = await smollm2.run(_req(messages, max_new_tokens=6))
    assert a.output == b.output
    assert a.tokens_out == 6
    assert a.finish_reason == "length"


@pytest.mark.slow
async def test_smollm2_reloads_fast_from_the_conversion_cache(
    smollm2: TransformersRuntime, gguf_cache: Path
) -> None:
    assert _converted_dirs(gguf_cache), "the first load (here or in a test before) should have filled the cache"
    runtime = build_runtime(builtin_spec("smollm2-135m-instruct", convert_cache=str(gguf_cache)))
    started = time.perf_counter()
    runtime.load()
    elapsed = time.perf_counter() - started
    print(f"\nsmollm2 reloaded from the conversion cache in {elapsed:.1f}s")
    try:
        question = _req("What is the capital of France?", max_new_tokens=24)
        fresh, cached = await smollm2.run(question), await runtime.run(question)
        assert cached.output == fresh.output
        assert (cached.tokens_in, cached.tokens_out) == (fresh.tokens_in, fresh.tokens_out)
        assert elapsed < 15
    finally:
        runtime.close()


# ---------------------------------------------------------------------- all-MiniLM-L6-v2


async def test_minilm_embeddings_shape_and_similarity(minilm: TransformersRuntime) -> None:
    assert minilm.task is Task.EMBED
    cat = (await minilm.run(_req("A cat sits on the mat."))).output
    assert isinstance(cat, list) and len(cat) == 384
    assert all(isinstance(x, float) for x in cat)
    assert abs(math.sqrt(sum(x * x for x in cat)) - 1.0) < 1e-5  # normalised by default
    assert abs(_cos(cat, cat) - 1.0) < 1e-5
    batch = await minilm.run(
        _req(["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell."])
    )
    same, near, far = batch.output
    assert len(batch.output) == 3 and batch.tokens_in > 0
    assert abs(_cos(same, cat) - 1.0) < 1e-4  # padding in a batch does not change the vector
    assert _cos(cat, far) < _cos(cat, near) < 0.999


async def test_minilm_unnormalised_and_empty(minilm: TransformersRuntime) -> None:
    raw = (await minilm.run(_req("hello world", normalize=False))).output
    assert abs(math.sqrt(sum(x * x for x in raw)) - 1.0) > 1e-3
    assert (await minilm.run(_req([]))).output == []


@pytest.mark.parametrize("bad", [["ok", 3], 42, {"text": "hi"}, None, [{"role": "user", "content": "hi"}]])
async def test_minilm_rejects_wrong_input_types(minilm: TransformersRuntime, bad: object) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await minilm.run(_req(bad))
    assert info.value.field == "input" and "input" in info.value.message


async def test_minilm_matches_sentence_transformers(minilm: TransformersRuntime) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(minilm.source, device="cpu", local_files_only=True)
    texts = ["The quick brown fox.", "word " * 400]  # the second is truncated at 256 tokens
    expected = reference.encode(texts, normalize_embeddings=True).tolist()
    got = (await minilm.run(_req(texts))).output
    for want, have in zip(expected, got, strict=True):
        assert _cos(want, have) > 0.9999
    assert os.environ["HF_HUB_OFFLINE"] == "1"
