"""ModelCache: LRU eviction under a byte budget, pinned models kept, sizes measured, events in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import ModelState
from services.worker import memory
from services.worker.model_cache import CachedModel, ModelCache
from services.worker.runtimes import GenerationParams, RunRequest
from services.worker.runtimes.catalog import ModelSpec, builtin_spec, parse_model_spec
from tests.tiny_models import build_tiny_gpt2
from tether import errors
from tether.status import model_line


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache-models")
    return {name: build_tiny_gpt2(root / name, seed=i) for i, name in enumerate("abc")}


@pytest.fixture(scope="module")
def model_size(tiny_dirs: dict[str, Path]) -> int:
    from services.worker.runtimes.catalog import build_runtime

    runtime = build_runtime(parse_model_spec(f"probe:1={tiny_dirs['a']}"))
    runtime.load()
    try:
        return memory.model_bytes(runtime)
    finally:
        runtime.close()


def _specs(dirs: dict[str, Path], pinned: str = "a") -> list[ModelSpec]:
    return [parse_model_spec(f"{n}:1={d}" + (";pin=true" if n == pinned else "")) for n, d in dirs.items()]


def _states(cache: ModelCache) -> dict[str, ModelState]:
    return {k[0]: m.state for k, m in cache.models.items()}


async def _generate(cache: ModelCache, name: str) -> str:
    async with cache.use((name, "1")) as runtime:
        out = await runtime.run(RunRequest(job_id=name, input="hello", params=GenerationParams(max_new_tokens=4)))
    return str(out.output)


async def test_lru_eviction_under_a_budget_keeps_pinned_models(tiny_dirs: dict[str, Path], model_size: int) -> None:
    events: list[tuple[str, ModelState]] = []

    async def on_change(entry: CachedModel) -> None:
        if entry.state is not ModelState.LOADING or entry.progress == 0.0:
            events.append((entry.spec.model_id, entry.state))

    cache = ModelCache(_specs(tiny_dirs), budget=int(2.5 * model_size), on_change=on_change)
    try:
        await cache.start()
        assert _states(cache) == {"a": ModelState.WARM, "b": ModelState.WARM, "c": ModelState.EVICTED}
        assert "budget" in (cache.models[("c", "1")].detail or "")
        assert cache.models[("a", "1")].size == model_size  # measured from the loaded tensors
        first_b = await _generate(cache, "b")

        await _generate(cache, "c")  # loads c: b is the least recently used unpinned model
        assert _states(cache) == {"a": ModelState.WARM, "b": ModelState.EVICTED, "c": ModelState.WARM}
        assert cache.used() <= cache.budget

        await _generate(cache, "a")  # touching the pinned model changes nothing
        assert await _generate(cache, "b") == first_b  # b comes back (evicting c) and answers the same
        assert _states(cache) == {"a": ModelState.WARM, "b": ModelState.WARM, "c": ModelState.EVICTED}
        assert events == [
            ("a", ModelState.LOADING), ("a", ModelState.WARM),
            ("b", ModelState.LOADING), ("b", ModelState.WARM),
            ("c", ModelState.EVICTED),
            ("b", ModelState.EVICTED), ("c", ModelState.LOADING), ("c", ModelState.WARM),
            ("c", ModelState.EVICTED), ("b", ModelState.LOADING), ("b", ModelState.WARM),
        ]  # fmt: skip
        assert cache.models[("a", "1")].loads == 1 and cache.evictions == 2
    finally:
        await cache.close()


async def test_a_model_running_a_job_is_not_evicted(tiny_dirs: dict[str, Path], model_size: int) -> None:
    cache = ModelCache(_specs(tiny_dirs), budget=int(2.5 * model_size))
    try:
        await cache.start()
        async with cache.use(("b", "1")):
            assert not cache.can_serve(("c", "1"))
            with pytest.raises(errors.NoCapacity, match="budget"):
                await cache.ensure(("c", "1"))
        assert cache.can_serve(("c", "1"))
        await cache.ensure(("c", "1"))
        assert _states(cache)["b"] is ModelState.EVICTED
    finally:
        await cache.close()


async def test_pinned_models_load_even_over_budget_and_unknown_models_are_refused(
    tiny_dirs: dict[str, Path], model_size: int
) -> None:
    specs = [parse_model_spec(f"{n}:1={d};pin=true") for n, d in tiny_dirs.items()]
    cache = ModelCache(specs, budget=model_size)
    try:
        await cache.start()
        assert set(_states(cache).values()) == {ModelState.WARM}
        assert cache.used() == 3 * model_size
        with pytest.raises(errors.ModelUnknown):
            await cache.ensure(("nope", "1"))
        name = next(iter(tiny_dirs))
        assert await cache.evict((name, "1")) == f"{name}:1 is pinned"  # an operator's evict is refused
        assert _states(cache)[name] is ModelState.WARM
    finally:
        await cache.close()


async def test_a_failed_load_is_reported_and_not_retried(tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    states: list[ModelState] = []

    async def on_change(entry: CachedModel) -> None:
        states.append(entry.state)

    cache = ModelCache([parse_model_spec(f"broken:1={tmp_path / 'missing'}")], budget=1 << 30, on_change=on_change)
    try:
        await cache.start()
        entry = cache.models[("broken", "1")]
        assert entry.state is ModelState.FAILED and entry.detail
        assert states == [ModelState.LOADING, ModelState.FAILED]
        with pytest.raises(errors.WorkerFailed, match="failed to load") as failed:
            await cache.ensure(("broken", "1"))
        assert failed.value.retryable  # another worker may load it
        assert not cache.can_serve(("broken", "1"))
    finally:
        await cache.close()


def test_estimates_come_from_the_files(tiny_dirs: dict[str, Path], model_size: int) -> None:
    spec = parse_model_spec(f"a:1={tiny_dirs['a']}")
    estimate = memory.estimate_bytes(spec)
    assert 0.5 * model_size < estimate < 2 * model_size
    assert memory.estimate_bytes(parse_model_spec("echo")) == 0
    assert memory.default_budget("cpu") > 0


async def test_load_progress_is_reported_while_loading(caplog: pytest.LogCaptureFixture) -> None:
    try:
        spec = builtin_spec("all-minilm-l6-v2")
    except errors.ModelUnknown as exc:
        pytest.skip(str(exc))
    progress: list[float] = []

    async def on_change(entry: CachedModel) -> None:
        if entry.state is ModelState.LOADING and entry.progress:
            progress.append(entry.progress)
            line = model_line(entry.served().wire())
            assert line.startswith("all-minilm-l6-v2:1 (loading ") and line.endswith("%)")

    cache = ModelCache([spec], budget=1 << 34, on_change=on_change, progress_every_s=0.01)
    try:
        with caplog.at_level("INFO"):
            await cache.start()
        assert cache.models[spec.key].state is ModelState.WARM
        assert progress and all(0 < p <= 0.99 for p in progress), progress
        assert any(r.getMessage() == "loading model" for r in caplog.records)
        warm = cache.models[spec.key].served()
        assert model_line(warm.wire()) == "all-minilm-l6-v2:1" and warm.size_mb and warm.size_mb > 50
    finally:
        await cache.close()


class _Timed:
    """A stand-in runtime for the cache's own logic: a size, a slow close, and a job that notices a close."""

    sizes: dict[str, int] = {}

    def __init__(self, spec: ModelSpec) -> None:
        self.model_id, self.version, self.task = spec.model_id, spec.version, spec.task
        self.closed = False

    def load(self) -> None:
        pass

    def close(self) -> None:
        import time

        time.sleep(0.2)  # long enough for a job to start on a later victim meanwhile
        self.closed = True

    async def run(self, request: RunRequest) -> object:
        import asyncio

        from services.worker.runtimes.base import RunResult

        await asyncio.sleep(0.5)
        if self.closed:
            raise RuntimeError(f"{self.model_id}: closed under a running job")
        return RunResult(output="ok")


def _timed_cache(monkeypatch: pytest.MonkeyPatch, sizes: dict[str, int], budget: int) -> ModelCache:
    monkeypatch.setattr(memory, "model_bytes", lambda runtime: sizes[runtime.model_id])
    specs = [parse_model_spec(f"{m}:1=echo") for m in sizes]
    cache = ModelCache(specs, budget=budget, build=_Timed)  # type: ignore[arg-type]
    for spec in specs:
        cache.models[spec.key].size = sizes[spec.model_id]
    return cache


async def test_an_eviction_skips_a_model_that_a_job_started_on_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    cache = _timed_cache(monkeypatch, {"a": 100, "b": 100, "c": 200}, budget=200)
    await cache.start()
    try:
        assert _states(cache) == {"a": ModelState.WARM, "b": ModelState.WARM, "c": ModelState.EVICTED}

        async def job(name: str, delay: float) -> object:
            await asyncio.sleep(delay)
            async with cache.use((name, "1")) as runtime:
                return await runtime.run(RunRequest(job_id=name, input="x"))

        # c needs a and b evicted; while a closes, a job starts on b
        c, b = await asyncio.gather(job("c", 0), job("b", 0.05), return_exceptions=True)
        assert getattr(b, "output", None) == "ok", b  # b was not closed under its job
        assert isinstance(c, errors.NoCapacity), c  # c waits for room instead
    finally:
        await cache.close()


async def test_a_model_larger_than_estimated_makes_room_after_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _timed_cache(monkeypatch, {"a": 100, "b": 150}, budget=200)
    cache.models[("b", "1")].size = 0  # estimated 0 (a hub id), measured 150 once loaded
    await cache.start()
    try:
        await cache.ensure(("b", "1"))
        assert cache.used() <= cache.budget, {k[0]: (m.state, m.size) for k, m in cache.models.items()}
        assert cache.models[("a", "1")].state is ModelState.EVICTED
    finally:
        await cache.close()
