"""Runtimes: echo, TransformersRuntime on a tiny local GPT-2, and the interface contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.worker.runtimes import (
    EchoRuntime,
    GenerationParams,
    ModelRuntime,
    RunRequest,
    Task,
    TransformersRuntime,
)
from tests.tiny_models import build_tiny_gpt2
from tether import errors

PROMPT = "what is the capital of france ?"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _req(value: object, **params: object) -> RunRequest:
    return RunRequest(job_id="j1", input=value, params=GenerationParams(**params))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def tiny_chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2-chat"), chat=True)


def _loaded(path: Path) -> Iterator[TransformersRuntime]:
    runtime = TransformersRuntime("tiny", "1", Task.GENERATE, path)
    runtime.load()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Iterator[TransformersRuntime]:
    yield from _loaded(tiny_dir)


@pytest.fixture(scope="module")
def tiny_chat(tiny_chat_dir: Path) -> Iterator[TransformersRuntime]:
    yield from _loaded(tiny_chat_dir)


# ---------------------------------------------------------------------- echo


async def test_echo_returns_input_unchanged() -> None:
    runtime = EchoRuntime()
    runtime.load()
    for value in ("hello", ["a", "b"], {"k": 1}, ""):
        result = await runtime.run(_req(value))
        assert result.output is value
        assert result.finish_reason == "stop"
    runtime.close()


def test_runtimes_satisfy_protocol(tiny: TransformersRuntime) -> None:
    assert isinstance(EchoRuntime(), ModelRuntime)
    assert isinstance(tiny, ModelRuntime)
    assert (EchoRuntime().model_id, EchoRuntime().version, EchoRuntime().task) == ("echo", "1", Task.ECHO)


# ---------------------------------------------------------------------- tiny GPT-2: generation


async def test_greedy_is_deterministic_and_respects_max_new_tokens(tiny: TransformersRuntime) -> None:
    first = await tiny.run(_req(PROMPT, max_new_tokens=8))
    second = await tiny.run(_req(PROMPT, max_new_tokens=8))
    assert first.output == second.output
    assert first.output and PROMPT not in first.output  # only the new text comes back
    assert 0 < first.tokens_out <= 8
    assert first.tokens_in == len(PROMPT.split())
    # The tiny model's <eos> logit is pinned to 0, so greedy never stops early.
    assert first.tokens_out == 8
    assert first.finish_reason == "length"


async def test_a_fresh_build_gives_the_same_text(tiny: TransformersRuntime, tmp_path: Path) -> None:
    other = TransformersRuntime("tiny", "1", Task.GENERATE, build_tiny_gpt2(tmp_path / "again"))
    other.load()
    try:
        a = await tiny.run(_req(PROMPT, max_new_tokens=6))
        b = await other.run(_req(PROMPT, max_new_tokens=6))
        assert a.output == b.output
    finally:
        other.close()


async def test_sampling_with_a_seed_is_reproducible(tiny: TransformersRuntime) -> None:
    params = {"max_new_tokens": 12, "temperature": 1.5, "top_k": 0, "top_p": 1.0}
    a = await tiny.run(_req(PROMPT, seed=7, **params))
    b = await tiny.run(_req(PROMPT, seed=7, **params))
    assert a.output == b.output
    others = {(await tiny.run(_req(PROMPT, seed=s, **params))).output for s in range(8, 14)}
    assert len(others | {a.output}) > 1  # different seeds explore different continuations


async def test_stop_string_trims_output_and_stops_early(tiny: TransformersRuntime) -> None:
    params = {"max_new_tokens": 16, "temperature": 1.0, "seed": 0}
    full = await tiny.run(_req("hello", **params))
    words = full.output.split()
    stop = next(w for i, w in enumerate(words) if i >= 2 and w not in words[:i] and w.isalpha())
    cut = await tiny.run(_req("hello", stop=[stop], **params))
    assert cut.output == full.output[: full.output.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.tokens_out < full.tokens_out  # generation ended at the stop string, not at max_new_tokens


async def test_pad_token_falls_back_to_eos(tiny: TransformersRuntime) -> None:
    assert tiny.tokenizer.pad_token == tiny.tokenizer.eos_token == "<eos>"


async def test_chat_template_is_applied(tiny_chat: TransformersRuntime) -> None:
    # With a template, a string becomes one user message; the same text as a message list matches.
    as_text = await tiny_chat.run(_req(PROMPT, max_new_tokens=5))
    as_messages = await tiny_chat.run(_req([{"role": "user", "content": PROMPT}], max_new_tokens=5))
    raw = await tiny_chat.run(_req(PROMPT, max_new_tokens=5, chat=False))
    assert as_text.output == as_messages.output
    assert as_text.tokens_in == raw.tokens_in + 5  # "user :" ... ". assistant :" around the prompt
    assert raw.tokens_in == len(PROMPT.split())


async def test_messages_without_chat_template_are_rejected(tiny: TransformersRuntime) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await tiny.run(_req([{"role": "user", "content": "hi"}]))
    assert info.value.field == "input"


#: What Mistral- and Llama-2-style templates do with a conversation they do not accept.
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{% endif %}{{ m['role'] + ' : ' + m['content'] + ' . ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant :' }}{% endif %}"
)


async def test_a_conversation_the_chat_template_refuses_is_invalid_request(tiny_chat: TransformersRuntime) -> None:
    """Not a worker failure: that would be retried, dead-lettered, and count against the model's breaker."""
    original = tiny_chat.tokenizer.chat_template
    tiny_chat.tokenizer.chat_template = STRICT_TEMPLATE
    try:
        ok = await tiny_chat.run(_req([{"role": "user", "content": "hi"}], max_new_tokens=2))
        assert ok.tokens_in > 0 and ok.tokens_out == 2  # the template takes an alternating conversation
        with pytest.raises(errors.InvalidRequest, match=r"chat template refused.*must alternate") as info:
            await tiny_chat.run(_req([{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]))
        assert info.value.field == "input"
    finally:
        tiny_chat.tokenizer.chat_template = original


@pytest.mark.parametrize("bad", [{"prompt": "hi"}, 42, None, ["hi", "there"], [], [{"role": "user"}]])
async def test_generate_rejects_wrong_input_types(tiny_chat: TransformersRuntime, bad: object) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await tiny_chat.run(_req(bad))
    assert info.value.field == "input"
    assert "input" in info.value.message
    assert info.value.job_id == "j1"


async def test_generate_rejects_bad_params(tiny: TransformersRuntime) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await tiny.run(_req(PROMPT, max_new_tokens=0))
    assert info.value.field == "params.max_new_tokens"


async def test_prompt_longer_than_context_is_rejected(tiny: TransformersRuntime) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await tiny.run(_req("the " * 600, max_new_tokens=4))
    assert info.value.field == "input"


async def test_run_does_not_block_the_event_loop(tiny: TransformersRuntime) -> None:
    ticks = 0
    gaps: list[float] = []

    async def ticker() -> None:
        nonlocal ticks
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last, ticks = now, ticks + 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    result = await tiny.run(_req(PROMPT, max_new_tokens=300))
    elapsed = time.perf_counter() - started
    task.cancel()
    assert result.tokens_out == 300
    assert elapsed > 0.1, "generation too quick to tell anything"
    assert ticks >= 10
    assert max(gaps) < max(0.5, elapsed / 2)  # no stall anywhere near the whole generation


async def test_concurrent_runs_serialise_on_the_runtime_thread(tiny: TransformersRuntime) -> None:
    alone = await tiny.run(_req(PROMPT, max_new_tokens=6))
    together = await asyncio.gather(*(tiny.run(_req(PROMPT, max_new_tokens=6)) for _ in range(4)))
    assert all(r.output == alone.output for r in together)


async def test_run_after_close_fails(tiny_dir: Path) -> None:
    runtime = TransformersRuntime("tiny", "1", Task.GENERATE, tiny_dir)
    with pytest.raises(errors.WorkerFailed):
        await runtime.run(_req(PROMPT))  # not loaded yet
    runtime.load()
    assert (await runtime.run(_req(PROMPT, max_new_tokens=2))).tokens_out == 2
    runtime.close()
    runtime.close()  # idempotent
    with pytest.raises(errors.WorkerFailed):
        await runtime.run(_req(PROMPT))


def test_constructor_validates_options(tiny_dir: Path) -> None:
    with pytest.raises(errors.InvalidRequest):
        TransformersRuntime("x", "1", Task.ECHO, tiny_dir)
    with pytest.raises(errors.InvalidRequest):
        TransformersRuntime("x", "1", Task.GENERATE, tiny_dir, dtype="float64")
    with pytest.raises(errors.InvalidRequest):
        TransformersRuntime("x", "1", Task.GENERATE, tiny_dir, device="tpu")


async def test_the_tokenizers_own_eos_stops_generation_as_in_the_engine(tiny_dir: Path) -> None:
    """A model whose tokenizer ends a turn with a token its generation config does not list (early
    Llama-3 configs and <|eot_id|>): the naive runtime stops there too, not at max_new_tokens."""
    runtime = next(_loaded(tiny_dir))
    try:
        runtime.tokenizer.eos_token = "is"  # the word this prompt's greedy continuation starts with
        assert runtime.tokenizer.eos_token_id not in {runtime.model.generation_config.eos_token_id}
        result = await runtime.run(_req("the capital of france is", max_new_tokens=12))
        assert (result.tokens_out, result.finish_reason) == (1, "stop"), result
    finally:
        runtime.close()


async def test_a_model_without_any_eos_or_pad_token_generates_to_its_limit(tiny_dir: Path) -> None:
    runtime = next(_loaded(tiny_dir))
    try:
        runtime.model.generation_config.eos_token_id = None
        runtime.model.generation_config.pad_token_id = None
        runtime.tokenizer.eos_token = None
        runtime.tokenizer.pad_token = None
        assert runtime.eos_ids() == set()
        result = await runtime.run(_req("the capital of france is", max_new_tokens=5))
        assert (result.tokens_out, result.finish_reason) == (5, "length"), result
    finally:
        runtime.close()
