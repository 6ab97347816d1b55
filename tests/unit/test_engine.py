"""The batching engine on a tiny seeded GPT-2: batched greedy equals alone, joins between
steps, streaming order, stop strings, resume, cancellation, seeded sampling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.worker.engine import EngineRuntime
from services.worker.runtimes import GenerationParams, RunRequest, Task, TransformersRuntime
from services.worker.runtimes.base import CancelToken, Delta, Resume
from tether import errors

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPTS = [
    "hello",
    "the capital of france is",
    "one two three four five six seven eight nine ten red green blue",
    "cat",
    "what is the sky ? the sky is blue and the sea is green and the sun is",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_dir: Path) -> AsyncIterator[EngineRuntime]:
    runtime = EngineRuntime(TransformersRuntime("tiny", "1", Task.GENERATE, tiny_dir), max_batch=8)
    await asyncio.to_thread(runtime.load)
    yield runtime
    await asyncio.to_thread(runtime.close)


def _req(prompt: str, job: str = "j", **params: object) -> RunRequest:
    return RunRequest(job_id=job, input=prompt, params=GenerationParams(**params))  # type: ignore[arg-type]


async def test_batched_greedy_equals_alone_for_prompts_of_different_lengths(
    engine: EngineRuntime, naive: TransformersRuntime
) -> None:
    lengths = [12, 20, 7, 30, 16]
    alone = [await naive.run(_req(p, max_new_tokens=n)) for p, n in zip(PROMPTS, lengths, strict=True)]
    steps_before = engine.engine.stats.steps  # type: ignore[union-attr]
    batched = await asyncio.gather(
        *(engine.run(_req(p, f"b{i}", max_new_tokens=n)) for i, (p, n) in enumerate(zip(PROMPTS, lengths, strict=True)))
    )
    for a, b in zip(alone, batched, strict=True):
        assert b.output == a.output
        assert (b.tokens_in, b.tokens_out, b.finish_reason) == (a.tokens_in, a.tokens_out, "length")
        assert b.ttft_s is not None and b.ttft_s > 0
    steps = engine.engine.stats.steps - steps_before  # type: ignore[union-attr]
    assert steps < sum(lengths) / 2, steps  # shared steps: the longest request bounds them, not the sum


async def test_requests_join_a_running_batch_between_steps(engine: EngineRuntime, naive: TransformersRuntime) -> None:
    stats = engine.engine.stats  # type: ignore[union-attr]
    seen = asyncio.Event()
    long_deltas: list[Delta] = []

    def on_delta(d: Delta) -> None:
        long_deltas.append(d)
        if len(long_deltas) == 5:
            seen.set()

    long_req = _req(PROMPTS[2], "long", max_new_tokens=200)
    long_req.on_delta = on_delta
    long_task = asyncio.create_task(engine.run(long_req))
    await seen.wait()
    prefills = stats.prefills
    joined = await asyncio.gather(*(engine.run(_req(p, f"late{i}", max_new_tokens=10)) for i, p in enumerate(PROMPTS)))
    assert engine.engine.generated("long") is not None, "the long request should still be decoding"  # type: ignore[union-attr]
    assert stats.prefills > prefills and stats.largest_batch >= 2
    for p, got in zip(PROMPTS, joined, strict=True):
        assert got.output == (await naive.run(_req(p, max_new_tokens=10))).output
    long_result = await long_task
    assert long_result.output == (await naive.run(_req(PROMPTS[2], max_new_tokens=200))).output


async def test_streamed_deltas_are_ordered_and_complete(engine: EngineRuntime) -> None:
    deltas: list[Delta] = []
    req = _req(PROMPTS[1], "stream", max_new_tokens=25)
    req.on_delta = deltas.append
    result = await engine.run(req)
    assert _contiguous(deltas, start=0)
    assert sum(len(d.token_ids) for d in deltas) == result.tokens_out == 25
    assert "".join(d.text for d in deltas) == result.output
    assert len(deltas[0].token_ids) == 1  # the first token goes out alone, at once


def _contiguous(deltas: list[Delta], *, start: int) -> bool:
    """Each delta starts where the previous one ended (deltas may carry several tokens)."""
    offset = start
    for d in deltas:
        if d.offset != offset or not d.token_ids:
            return False
        offset += len(d.token_ids)
    return True


async def test_stop_string_ends_the_text_and_is_never_streamed(
    engine: EngineRuntime, naive: TransformersRuntime
) -> None:
    full = (await engine.run(_req(PROMPTS[0], max_new_tokens=40))).output
    words = full.split()
    stop = " ".join(words[3:5])  # two words from the middle of the greedy continuation
    deltas: list[Delta] = []
    req = _req(PROMPTS[0], "stop", max_new_tokens=40, stop=[stop])
    req.on_delta = deltas.append
    result = await engine.run(req)
    expected = full[: full.index(stop)]
    assert result.output == expected and result.finish_reason == "stop"
    assert "".join(d.text for d in deltas) == expected
    assert (await naive.run(_req(PROMPTS[0], max_new_tokens=40, stop=[stop]))).output == expected


async def test_resume_continues_after_the_delivered_prefix(engine: EngineRuntime) -> None:
    first: list[Delta] = []
    req = _req(PROMPTS[3], "r1", max_new_tokens=30)
    req.on_delta = first.append
    full = await engine.run(req)
    ids = [t for d in first for t in d.token_ids]
    cut = 11
    text = engine.inner.tokenizer.decode(ids[:cut], skip_special_tokens=True)
    assert full.output.startswith(text)
    resume = Resume(text=text, token_ids=ids[:cut])
    second: list[Delta] = []
    req2 = _req(PROMPTS[3], "r2", max_new_tokens=30)
    req2.resume, req2.on_delta = resume, second.append
    resumed = await engine.run(req2)
    assert resumed.output == full.output and resumed.tokens_out == 30
    assert _contiguous(second, start=cut) and sum(len(d.token_ids) for d in second) == 30 - cut
    assert resume.text + "".join(d.text for d in second) == full.output


async def test_cancel_stops_decoding_within_a_step_and_frees_the_slot(tiny_dir: Path) -> None:
    runtime = EngineRuntime(TransformersRuntime("tiny", "1", Task.GENERATE, tiny_dir), max_batch=2)
    await asyncio.to_thread(runtime.load)
    try:
        token, deltas, at_cancel = CancelToken(), [], []
        started = asyncio.Event()

        def on_delta(d: Delta) -> None:
            deltas.append(d)
            if len(deltas) == 3:
                at_cancel.append(runtime.engine.generated("victim"))  # type: ignore[union-attr]
                token.cancel("client went away")
                started.set()

        victim = _req(PROMPTS[0], "victim", max_new_tokens=400)
        victim.on_delta, victim.cancel = on_delta, token
        other = asyncio.create_task(runtime.run(_req(PROMPTS[1], "other", max_new_tokens=400)))
        victim_task = asyncio.create_task(runtime.run(victim))
        await started.wait()
        waiting = asyncio.create_task(runtime.run(_req(PROMPTS[3], "waiting", max_new_tokens=5)))
        with pytest.raises(errors.Cancelled) as info:
            await victim_task
        assert "client went away" in info.value.message
        produced = sum(len(d.token_ids) for d in deltas)
        assert at_cancel[0] is not None and produced <= at_cancel[0] + 1, (produced, at_cancel)
        short = await waiting  # the freed slot let it in while "other" is still decoding
        assert short.tokens_out == 5 and not other.done()
        assert (await other).tokens_out == 400
    finally:
        await asyncio.to_thread(runtime.close)


async def test_seeded_sampling_is_the_same_alone_and_batched(engine: EngineRuntime) -> None:
    params = {"max_new_tokens": 20, "temperature": 1.0, "seed": 42}
    alone = await engine.run(_req("hello", "s0", **params))
    crowd = await asyncio.gather(
        engine.run(_req("hello", "s1", **params)),
        *(engine.run(_req(p, f"n{i}", max_new_tokens=20)) for i, p in enumerate(PROMPTS)),
    )
    other_seed = await engine.run(_req("hello", "s2", max_new_tokens=20, temperature=1.0, seed=7))
    greedy = await engine.run(_req("hello", "g", max_new_tokens=20))
    assert crowd[0].output == alone.output
    assert other_seed.output != alone.output and greedy.output != alone.output


async def test_context_limit_and_bad_params_are_errors(engine: EngineRuntime) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await engine.run(_req("hello " * 600, "long-prompt", max_new_tokens=4))
    assert info.value.field == "input"
    with pytest.raises(errors.InvalidRequest):
        await engine.run(_req("hello", "bad", max_new_tokens=0))
    near_limit = await engine.run(_req("hello " * 505, "near", max_new_tokens=50))
    assert near_limit.tokens_out == 512 - 505 and near_limit.finish_reason == "length"


async def test_a_vanishing_temperature_is_greedy_and_leaves_the_engine_serving(
    engine: EngineRuntime, naive: TransformersRuntime
) -> None:
    greedy = await naive.run(_req("the capital of france is", max_new_tokens=8))
    tiny = await engine.run(_req("the capital of france is", "tiny-temp", max_new_tokens=8, temperature=1e-300))
    assert tiny.output == greedy.output  # logits / 1e-300 would be inf and NaN: greedy instead
    assert (await naive.run(_req("the capital of france is", max_new_tokens=8, temperature=1e-300))).output == (
        greedy.output
    )
    after = await engine.run(_req("hello", "after", max_new_tokens=4))
    assert after.tokens_out == 4 and engine.engine._thread.is_alive()  # type: ignore[union-attr]


async def test_a_failure_choosing_tokens_fails_that_batch_only(engine: EngineRuntime) -> None:
    import services.worker.engine.generation as generation

    real = generation.next_tokens

    def broken(*args: object, **kwargs: object) -> list[int]:
        generation.next_tokens = real  # once
        raise RuntimeError("injected")

    generation.next_tokens = broken  # type: ignore[assignment]
    try:
        with pytest.raises(errors.WorkerFailed):
            await engine.run(_req("hello", "doomed", max_new_tokens=4))
    finally:
        generation.next_tokens = real
    assert (await engine.run(_req("hello", "next", max_new_tokens=4))).tokens_out == 4
    assert engine.engine._thread.is_alive()  # type: ignore[union-attr]


async def test_an_input_without_tokens_is_invalid_not_a_worker_failure(
    engine: EngineRuntime, naive: TransformersRuntime
) -> None:
    ids = naive.tokenizer("   ", return_tensors="pt")["input_ids"]
    if ids.shape[-1] != 0:
        pytest.skip("this tokenizer keeps whitespace as tokens")
    for runtime in (engine, naive):
        with pytest.raises(errors.InvalidRequest) as info:
            await runtime.run(_req("   ", "blank", max_new_tokens=4))
        assert info.value.field == "input"


async def test_a_cancel_ends_a_waiting_request_without_waiting_for_a_slot(tiny_dir: Path) -> None:
    runtime = EngineRuntime(TransformersRuntime("tiny", "1", Task.GENERATE, tiny_dir), max_batch=1)
    await asyncio.to_thread(runtime.load)
    try:
        running = asyncio.create_task(runtime.run(_req(PROMPTS[1], "long", max_new_tokens=400)))
        while not runtime.engine.running:  # type: ignore[union-attr]
            await asyncio.sleep(0.005)
        queued = _req(PROMPTS[0], "queued", max_new_tokens=5)
        queued.cancel = CancelToken()
        waiting = asyncio.create_task(runtime.run(queued))
        await asyncio.sleep(0.05)
        queued.cancel.cancel("client went away")
        with pytest.raises(errors.Cancelled):
            await asyncio.wait_for(waiting, 5)
        assert not running.done()  # it ended while the only slot was still taken
        assert (await running).tokens_out == 400
    finally:
        await asyncio.to_thread(runtime.close)


async def test_closing_frees_the_model_without_waiting_for_a_garbage_collection(tiny_dir: Path) -> None:
    import gc
    import weakref

    runtime = EngineRuntime(TransformersRuntime("tiny", "1", Task.GENERATE, tiny_dir), max_batch=2)
    await asyncio.to_thread(runtime.load)
    await runtime.run(_req(PROMPTS[0], "once", max_new_tokens=3))
    model = weakref.ref(runtime.inner.model)
    gc.disable()  # reference counting alone, as between two of the collector's rare full runs
    try:
        await asyncio.to_thread(runtime.close)
        del runtime
        assert model() is None, "the weights outlived the evicted runtime"
    finally:
        gc.enable()


async def test_a_seeded_sampled_job_resumed_gives_the_text_of_an_uninterrupted_run(engine: EngineRuntime) -> None:
    params = {"max_new_tokens": 24, "temperature": 1.0, "seed": 1234}
    first: list[Delta] = []
    req = _req(PROMPTS[1], "sr1", **params)
    req.on_delta = first.append
    full = await engine.run(req)
    ids = [t for d in first for t in d.token_ids]
    cut = 10
    text = engine.inner.tokenizer.decode(ids[:cut], skip_special_tokens=True)
    req2 = _req(PROMPTS[1], "sr2", **params)
    req2.resume = Resume(text=text, token_ids=ids[:cut])  # the same seed, continued on another worker
    resumed = await engine.run(req2)
    assert resumed.output == full.output


async def test_rows_leaving_a_sliding_window_models_batch_leave_the_others_running(tmp_path: Path) -> None:
    """Sliding-window cache layers keep their own positions: the batch must not cut padding columns under
    them when the row with the most context leaves first (it used to fail every other row)."""
    from tests.tiny_models import build_tiny_sliding_window

    model_dir = build_tiny_sliding_window(tmp_path / "swa", window=6)
    runtime = EngineRuntime(TransformersRuntime("swa", "1", Task.GENERATE, model_dir), max_batch=8)
    naive = TransformersRuntime("swa", "1", Task.GENERATE, model_dir)
    await asyncio.to_thread(runtime.load)
    await asyncio.to_thread(naive.load)
    try:
        cases = [(PROMPTS[2], 2), ("hello", 20), ("cat", 20)]  # the longest prompt finishes first
        alone = [await naive.run(_req(p, max_new_tokens=n)) for p, n in cases]
        batched = await asyncio.gather(
            *(runtime.run(_req(p, f"w{i}", max_new_tokens=n)) for i, (p, n) in enumerate(cases))
        )
        assert [b.output for b in batched] == [a.output for a in alone]
    finally:
        await asyncio.to_thread(runtime.close)
        await asyncio.to_thread(naive.close)
