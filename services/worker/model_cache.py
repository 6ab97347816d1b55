"""ModelCache (the seeds' ModelLoader): several models warm under a measured memory budget.

Every model a worker is configured with has an entry here. Loading one that would take
the warm set over the budget first evicts the least recently used models that are not
pinned and not running a job; pinned models (``pin=true`` in the spec, or named in
``TETHER_PIN_MODELS``) are never evicted. A model evicted this way stays known: a job for
it loads it again. Each state change (loading with a progress figure, warm, evicted,
failed) is reported through ``on_change`` so the worker can announce it on
``tether.models.<model>.<version>.<region>``, which keeps the scheduler's warm-cache view
true. Loads run one at a time on a daemon thread of their own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from schemas import ModelState, ServedModel
from services.worker import memory
from services.worker.runtimes.base import ModelRuntime
from services.worker.runtimes.catalog import ModelSpec, build_runtime
from tether.errors import ModelUnknown, NoCapacity, WorkerFailed
from tether.tasks import TaskGroup, in_daemon_thread

log = logging.getLogger(__name__)

MB = 1024 * 1024
PROGRESS_EVERY_S = 0.5

Key = tuple[str, str]


@dataclass(slots=True, eq=False)
class CachedModel:
    spec: ModelSpec
    pinned: bool = False
    state: ModelState = ModelState.LOADING  # until start() has loaded it (or left it out)
    runtime: ModelRuntime | None = None
    size: int = 0  # bytes, measured once warm (an estimate before the first load)
    last_used: float = 0.0
    inflight: int = 0
    detail: str | None = None
    progress: float | None = None
    loads: int = 0

    def served(self) -> ServedModel:
        return ServedModel(
            model_id=self.spec.model_id,
            version=self.spec.version,
            task=str(self.spec.task),
            state=self.state,
            progress=None if self.progress is None else round(self.progress, 3),
            size_mb=round(self.size / MB, 1) if self.state is ModelState.WARM else None,
            pinned=self.pinned,
        )


class ModelCache:
    def __init__(
        self,
        specs: list[ModelSpec],
        *,
        budget: int | None = None,
        pins: Collection[Key] = (),
        device: str = "cpu",
        on_change: Callable[[CachedModel], Awaitable[None]] | None = None,
        build: Callable[[ModelSpec], ModelRuntime] = build_runtime,
        resolve: Callable[[ModelSpec], Awaitable[ModelSpec]] | None = None,
        progress_every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        """``resolve`` turns a spec into the one to load (e.g. a verified artifact's local copy)."""
        self.device = device
        self.budget = memory.default_budget(device) if budget is None else budget
        self.models: dict[Key, CachedModel] = {
            s.key: CachedModel(s, pinned=s.pin or s.key in set(pins), size=memory.estimate_bytes(s)) for s in specs
        }
        self._on_change = on_change
        self._build = build
        self._resolve = resolve
        self.progress_every_s = progress_every_s
        self._lock = asyncio.Lock()  # one load (and its evictions) at a time
        self._loading: CachedModel | None = None
        self._tasks = TaskGroup("model-cache")
        self.evictions = 0

    # ------------------------------------------------------------------ queries

    def get(self, key: Key) -> CachedModel | None:
        return self.models.get(key)

    def used(self, *, exclude: CachedModel | None = None) -> int:
        """Bytes held by warm models and the one being loaded."""
        return sum(
            m.size
            for m in self.models.values()
            if m is not exclude and (m.state is ModelState.WARM or m is self._loading)
        )

    def warm(self) -> list[CachedModel]:
        return [m for m in self.models.values() if m.state is ModelState.WARM]

    def can_serve(self, key: Key) -> bool:
        """Warm, or loadable now by evicting idle unpinned models."""
        entry = self.models.get(key)
        if entry is None or entry.state is ModelState.FAILED:
            return False
        if entry.state is ModelState.WARM or entry is self._loading:
            return True
        freeable = sum(m.size for m in self._evictable(entry))
        return self.used() - freeable + entry.size <= self.budget

    # ------------------------------------------------------------------ loading

    async def start(self) -> None:
        """Load pinned models first, then the others in configuration order while they fit."""
        ordered = sorted(self.models.values(), key=lambda m: not m.pinned)
        for entry in ordered:
            if entry.pinned or self.used() + entry.size <= self.budget:
                with contextlib.suppress(NoCapacity, ModelUnknown, WorkerFailed):  # a failed load is recorded
                    await self.ensure(entry.spec.key, evict=entry.pinned)
            else:
                entry.state = ModelState.EVICTED
                entry.detail = f"not loaded at start: the {self.budget // MB} MB model budget is full"
                await self._changed(entry)

    async def ensure(self, key: Key, *, evict: bool = True) -> ModelRuntime:
        """The warm runtime for ``key``, loading it (and evicting others) if needed."""
        entry = self.models.get(key)
        if entry is None:
            raise ModelUnknown(f"this worker does not serve {key[0]}:{key[1]}")
        if entry.state is ModelState.WARM and entry.runtime is not None:  # no wait behind another load
            entry.last_used = time.monotonic()
            return entry.runtime
        async with self._lock:
            if entry.state is ModelState.WARM and entry.runtime is not None:
                entry.last_used = time.monotonic()
                return entry.runtime
            if entry.state is ModelState.FAILED:  # retryable: another worker may load it
                raise WorkerFailed(f"{key[0]}:{key[1]} failed to load on this worker: {entry.detail}")
            await self._make_room(entry, entry.size, evict=evict)
            await self._load(entry)
            if self.used() > self.budget:  # the measured size was larger than the estimate
                with contextlib.suppress(NoCapacity):  # the rest is pinned or busy: over until one is idle
                    await self._make_room(entry, entry.size, evict=True)
            assert entry.runtime is not None
            return entry.runtime

    async def _make_room(self, entry: CachedModel, need: int, *, evict: bool) -> None:
        for victim in self._evictable(entry):
            if self.used(exclude=entry) + need <= self.budget or not evict:
                break
            if victim.state is not ModelState.WARM or victim.inflight:  # a job took it during an await
                continue
            await self._evict(victim, f"evicted to make room for {entry.spec.model_id}:{entry.spec.version}")
        if entry.pinned or not evict:
            return
        if self.used(exclude=entry) + need > self.budget:
            raise NoCapacity(
                f"{entry.spec.model_id}:{entry.spec.version} needs ~{need // MB} MB; the {self.budget // MB} MB "
                f"model budget holds {self.used(exclude=entry) // MB} MB of pinned or busy models"
            )

    def _evictable(self, entry: CachedModel) -> list[CachedModel]:
        """Warm, unpinned, idle models other than ``entry``, least recently used first."""
        pool = [
            m
            for m in self.models.values()
            if m is not entry and m.state is ModelState.WARM and not m.pinned and m.inflight == 0
        ]
        return sorted(pool, key=lambda m: m.last_used)

    async def _load(self, entry: CachedModel) -> None:
        entry.state, entry.detail, entry.progress = ModelState.LOADING, None, 0.0
        await self._changed(entry)
        self._loading = entry
        started, base = time.perf_counter(), memory.memory_in_use(self.device)
        watcher = self._tasks.spawn(self._watch(entry, base), name=f"progress:{entry.spec.model_id}")
        runtime: ModelRuntime | None = None
        try:
            spec = await self._resolve(entry.spec) if self._resolve is not None else entry.spec
            runtime = self._build(spec)
            # its own daemon thread: a worker stopping mid-load (a SIGTERM during a long download)
            # exits without waiting for it, and the runtime is closed once the load returns
            await in_daemon_thread(runtime.load, name=f"load:{spec.model_id}", abandoned=runtime.close)
        except asyncio.CancelledError:
            entry.state, entry.detail = ModelState.EVICTED, "load cancelled: the worker is stopping"
            raise
        except Exception as exc:
            if runtime is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(runtime.close)
            entry.state, entry.detail = ModelState.FAILED, f"{type(exc).__name__}: {exc}"
            log.error("model failed to load", extra={"model": entry.spec.model_id, "error": entry.detail})
            raise WorkerFailed(  # retryable: the job moves to another worker, this one stops offering the model
                f"{entry.spec.model_id}:{entry.spec.version} failed to load on this worker: {entry.detail}"
            ) from exc
        finally:
            watcher.cancel()
            entry.progress, self._loading = None, None
            if entry.state is ModelState.FAILED:
                await self._changed(entry)
        entry.runtime, entry.state = runtime, ModelState.WARM
        entry.size = memory.model_bytes(runtime)
        entry.last_used, entry.loads = time.monotonic(), entry.loads + 1
        log.info(
            "model warm",
            extra={
                "model": entry.spec.model_id,
                "version": entry.spec.version,
                "load_s": round(time.perf_counter() - started, 2),
                "size_mb": round(entry.size / MB, 1),
            },
        )
        await self._changed(entry)

    async def _watch(self, entry: CachedModel, base: int) -> None:
        """Report load progress: memory grown so far over the expected size."""
        while True:
            await asyncio.sleep(self.progress_every_s)
            if entry.size <= 0:
                continue
            grown = memory.memory_in_use(self.device) - base
            entry.progress = max(0.0, min(0.99, grown / entry.size))
            log.info(
                "loading model",
                extra={"model": entry.spec.model_id, "percent": round(100 * entry.progress)},
            )
            await self._changed(entry)

    async def evict(self, key: Key, reason: str = "evicted by an operator") -> str | None:
        """Unload ``key`` now (``tether evict``); None when done, else why not (it stays as it is).

        A pinned model or one running a job is never evicted; an evicted model stays served and
        loads again on its next job.
        """
        async with self._lock:  # not in the middle of a load and its own evictions
            entry = self.models.get(key)
            if entry is None:
                return f"this worker does not serve {key[0]}:{key[1]}"
            if entry.pinned:
                return f"{key[0]}:{key[1]} is pinned"
            if entry.state is not ModelState.WARM:
                return f"{key[0]}:{key[1]} is {entry.state}, not warm"
            if entry.inflight:
                return f"{key[0]}:{key[1]} is running {entry.inflight} job(s)"
            await self._evict(entry, reason)
            return None

    async def _evict(self, entry: CachedModel, reason: str) -> None:
        runtime, entry.runtime = entry.runtime, None
        entry.state, entry.detail = ModelState.EVICTED, reason
        self.evictions += 1
        log.info("model evicted", extra={"model": entry.spec.model_id, "reason": reason})
        if runtime is not None:
            await asyncio.to_thread(runtime.close)
        await self._changed(entry)

    async def _changed(self, entry: CachedModel) -> None:
        if self._on_change is not None:
            try:
                await self._on_change(entry)
            except Exception:  # an announcement that fails must not break a load
                log.exception("model state announcement failed", extra={"model": entry.spec.model_id})

    # ------------------------------------------------------------------ use and shutdown

    def use(self, key: Key) -> _Held:
        """``async with cache.use(key) as runtime``: hold a warm runtime for one job; it is not
        evicted while held. (A class, not ``asynccontextmanager``: every job enters one.)"""
        return _Held(self, key)

    async def close(self) -> None:
        await self._tasks.close()
        for entry in self.models.values():
            runtime, entry.runtime = entry.runtime, None
            if runtime is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(runtime.close)


class _Held:
    __slots__ = ("_cache", "_entry", "_key")

    def __init__(self, cache: ModelCache, key: Key) -> None:
        self._cache = cache
        self._key = key
        self._entry: CachedModel | None = None

    async def __aenter__(self) -> ModelRuntime:
        runtime = await self._cache.ensure(self._key)
        entry = self._entry = self._cache.models[self._key]
        entry.inflight += 1
        entry.last_used = time.monotonic()
        return runtime

    async def __aexit__(self, *exc: object) -> None:
        entry = self._entry
        if entry is not None:
            entry.inflight -= 1
            entry.last_used = time.monotonic()
