"""The worker: serves models, accepts assignments, runs them, publishes results.

tether.dispatch.<worker>   <- a scheduler's assignments (DispatchBatch)
tether.control.cancel.<job> <- stop a running job within one decoding step
tether.results.<job>.chunks -> streamed tokens (core NATS), in order, before the final result
tether.results.<job>       -> the final result, into JetStream RESULTS (deduplicated per job)
tether.reports.<scheduler> -> acks (accept / refuse) and how each attempt ended (ReportBatch)
tether.presence.<region>.<worker>, tether.models.<model>.<version>.<region> -> heartbeats, availability
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from enum import StrEnum

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import (
    Dispatch,
    DispatchBatch,
    ModelState,
    ResultMessage,
    ResultStatus,
    Usage,
)
from schemas.messages import MAX_WORKER_CAPACITY
from services.worker.admission import BenchmarkResult, BenchmarkStopped, run_benchmark
from services.worker.artifacts import artifact_cache
from services.worker.artifacts import resolve as resolve_artifact
from services.worker.cancellation import CancelBoard, raise_if_cancelled
from services.worker.control import on_evict
from services.worker.device_support import resolve_device
from services.worker.draining import announce_ended, answer_drain, drain_grace, grace_of, log_failure
from services.worker.model_cache import CachedModel, ModelCache
from services.worker.params import generation_params
from services.worker.presence import PresenceBuilder, PresencePublisher
from services.worker.quota_guard import QuotaGuard
from services.worker.reporting import Reporter
from services.worker.runtimes.base import CancelToken, Resume, RunRequest
from services.worker.runtimes.catalog import ModelSpec, build_runtime
from services.worker.streaming import ChunkPublisher
from streams import apply, topology
from tether import codec, subjects, telemetry
from tether.connection import connect, drain_and_close, subscribe_inline
from tether.dispatch_auth import NOT_BEFORE_MARGIN_S, DispatchGate
from tether.e2e import FleetBox, fleet_key_path, is_sealed
from tether.envelope import EnvelopeRejected
from tether.errors import ModelUnknown, NoCapacity, TetherError, WorkerFailed
from tether.identity import Identity
from tether.results import publish_final
from tether.security import node_identity
from tether.settings import Settings
from tether.tasks import TaskGroup, closing_on_failure, settle_heap

log = logging.getLogger(__name__)


class WorkerState(StrEnum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


MB = 1024 * 1024


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        specs: list[ModelSpec],
        identity: Identity | None = None,
        worker_id: str | None = None,
    ) -> None:
        """``identity`` signs presence; default ``TETHER_HOME/keys/worker.key``. The worker id is
        the identity's node id (``worker_id``, when given, must be that id)."""
        self.settings = settings
        self.identity = identity or node_identity(settings, "worker")
        if worker_id is not None and worker_id != self.identity.node_id:
            raise ValueError(f"worker id {worker_id!r} does not belong to key {self.identity.node_id}")
        worker_id = self.worker_id = self.identity.node_id
        if not 1 <= settings.worker_concurrency <= MAX_WORKER_CAPACITY:  # its heartbeats would be refused
            raise ValueError(f"worker_concurrency must be 1..{MAX_WORKER_CAPACITY}, not {settings.worker_concurrency}")
        self.state = WorkerState.NEW
        self.device = resolve_device(next((s.device for s in specs if s.runtime == "transformers"), "cpu"))
        self.presence = PresenceBuilder(
            worker_id=worker_id,
            region=settings.region,
            capacity=settings.worker_concurrency,
            heartbeat_s=settings.heartbeat_s,
            models=lambda: [m.served() for m in self.cache.models.values()],
            queue_depth=lambda: len(self._jobs),
            draining=lambda: self.state is WorkerState.DRAINING,
            benchmark=lambda: self.benchmark,
        )
        self.herald = PresencePublisher(self.presence, self.identity)
        self.cache = ModelCache(
            specs,
            budget=int(settings.model_memory_mb * MB) if settings.model_memory_mb > 0 else None,
            pins=[_key(p) for p in settings.pin_models],
            device=self.device,
            on_change=self.herald.announce,
            resolve=lambda spec: resolve_artifact(
                spec, artifact_cache(self.settings, self.js, trust=self.dispatch_gate.verifier.trust)
            ),
            build=lambda spec: build_runtime(
                spec, max_batch=settings.max_batch, max_wait_s=settings.batch_wait_ms / 1000
            ),
        )
        self.slots = self.cache.models  # (model, version) -> CachedModel: state, runtime, detail
        self.quota = QuotaGuard(
            per_tenant=settings.worker_tenant_limit,
            max_queue=settings.worker_max_queue or settings.worker_concurrency,
        )
        self.cancels = CancelBoard()
        self.chunks: ChunkPublisher | None = None
        self.benchmark: BenchmarkResult | None = None
        self._benchmark_stop = threading.Event()  # set by close(): the benchmark's thread stops early
        self._ready = asyncio.Event()
        self._tasks = TaskGroup(f"worker:{worker_id}")
        self._jobs = TaskGroup(f"worker-jobs:{worker_id}")
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._own_nc = False
        self._sub = None
        self.reporter: Reporter | None = None
        self.dispatch_gate = DispatchGate.from_settings(settings, self.identity)
        self.dispatch_gate.not_before = self.presence.started_at - NOT_BEFORE_MARGIN_S
        self._unreported: set[tuple[str, int]] = set()  # accepted attempts not yet reported
        self.fleet_box = FleetBox.load(fleet_key_path(settings.keys_dir))
        self.completed = 0
        self.failed = 0
        self.stopped = asyncio.Event()  # set once closed (a drain ordered over NATS ends the process)
        self._control_subs: list[object] = []
        self._drain_task: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self, nc: Client | None = None) -> None:
        """Connect (unless given ``nc``), declare what it needs, subscribe; a start that fails half-way
        closes what it had opened before the error propagates."""
        if self.state is not WorkerState.NEW:
            raise RuntimeError(f"worker already {self.state}")
        await closing_on_failure(self._start(nc), self.close)

    async def _start(self, nc: Client | None) -> None:
        if nc is None:
            nc = await connect(self.settings.url, name=f"tether-worker-{self.worker_id}")
            self._own_nc = True
        self.nc, self.js = nc, nc.jetstream()
        self.herald.nc = nc
        await apply(self.js, topology(self.settings, nc._server_info))
        self.reporter = Reporter(nc, self.worker_id)
        self.chunks = ChunkPublisher(nc, self.worker_id)
        await self.dispatch_gate.start(self.js, self.settings)
        self._control_subs.append(await nc.subscribe(subjects.control_wildcard("cancel"), cb=self.cancels.on_message))
        self._sub = await subscribe_inline(nc, subjects.dispatch_subject(self.worker_id), self._on_dispatch)
        async def evict(msg: Msg) -> None:
            await on_evict(self.cache, self.worker_id, msg)

        for target in (self.worker_id, "all"):
            for action, cb in (("drain", self._on_drain), ("evict", evict)):
                self._control_subs.append(await nc.subscribe(subjects.control_subject(action, target), cb=cb))
        self.state = WorkerState.RUNNING
        await self.herald.beat()
        self._tasks.spawn(self.herald.run(), name="heartbeat")
        self._tasks.spawn(self.reporter.run(), name="reporter")
        self._tasks.spawn(self.chunks.run(), name="chunks")
        self._tasks.spawn(self._load_models(), name="load-models")
        if self.settings.admission_bench:
            self._tasks.spawn(self._admission(), name="admission-benchmark")
        log.info("worker started", extra={"worker": self.worker_id, "models": [k[0] for k in self.slots]})

    async def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until the start-up loads have ended (each model warm, failed, or left out by the budget)."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise TimeoutError("models still loading") from None

    async def drain(self, grace_s: float = 30.0) -> None:
        """Stop accepting, finish in-flight jobs within ``grace_s``, announce, stop.

        A drain already under way (ordered over NATS) is waited for, not cut short: a SIGTERM
        during it then ends the process only once the worker has closed cleanly.
        """
        if self.state is WorkerState.STOPPED:
            return
        if self.state is WorkerState.DRAINING:
            await self.stopped.wait()
            return
        self.state = WorkerState.DRAINING
        try:
            with contextlib.suppress(Exception):
                await self.herald.beat()
            finished = await self._jobs.wait(drain_grace(grace_s))
            if not finished:
                log.warning("drain grace expired; in-flight jobs handed back", extra={"left": len(self._jobs)})
        finally:  # whatever happens, a draining worker ends STOPPED (never refusing work forever)
            await self.close()

    async def close(self) -> None:
        if self.state is WorkerState.STOPPED:
            return
        ended = "drained" if self.state is WorkerState.DRAINING else "stopped"
        self.state = WorkerState.STOPPED
        self._benchmark_stop.set()
        try:
            for sub in [self._sub, *self._control_subs]:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()  # type: ignore[attr-defined]
            await self._jobs.close()  # first: their hand-back flushes chunks through a publisher in _tasks
            await self._tasks.close()
            await self.dispatch_gate.stop()
            if self.reporter is not None:
                await self.reporter.flush()  # acks and reports of attempts that ended while stopping
            await self.cache.close()
            self.presence.health.close()
            if self.nc is not None:
                await announce_ended(self.nc, self.worker_id, ended)
            if self.nc is not None and self._own_nc:
                await drain_and_close(self.nc)
        finally:  # a drain waiting on it (SIGTERM during an ordered drain) must not wait forever
            self.stopped.set()
        log.info("worker stopped", extra={"worker": self.worker_id})

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_drain(self, msg: Msg) -> None:
        """``tether.control.drain.<worker>`` (or ``.all``): drain within the given grace, then stop."""
        grace = grace_of(msg)
        log.warning("drain ordered", extra={"worker": self.worker_id, "grace_s": grace})
        if self.nc is not None:
            await answer_drain(self.nc, msg, self.worker_id, len(self._jobs))
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self.drain(grace))
            self._drain_task.add_done_callback(log_failure)

    # ---- presence -----------------------------------------------------------------------------

    async def _load_models(self) -> None:
        try:
            await self.cache.start()
            # Loaded models are millions of long-lived objects: keep them out of the cyclic
            # collector's scans, so a full collection cannot stall heartbeats and streaming.
            settle_heap()
        finally:
            self._ready.set()

    async def _admission(self) -> None:
        """The start-up benchmark, in the dtype the worker serves, off the event loop."""
        specs = [m.spec for m in self.cache.models.values() if m.spec.runtime == "transformers"]
        dtype = next((s.dtype for s in specs if s.dtype != "auto"), "float32")
        try:
            self.benchmark = await asyncio.to_thread(run_benchmark, self.device, dtype, stop=self._benchmark_stop)
        except BenchmarkStopped:
            return
        await self.herald.beat()

    # ---- assignments --------------------------------------------------------------------------

    def _on_dispatch(self, msg: Msg) -> None:
        try:
            batch = DispatchBatch.model_validate(
                codec.decode(self.dispatch_gate.open(msg.data), codec.MSGPACK)
            )
        except EnvelopeRejected:
            return  # forged, replayed or untrusted: counted and logged by the gate
        except Exception as exc:
            log.warning("malformed dispatch dropped", extra={"error": str(exc)})
            return
        assert self.reporter is not None
        for d in batch.items:
            slot = self.cache.get((d.model_id, d.version))
            refusal = self._refusal(d, slot)
            self.reporter.ack(d.report_to, d.job_id, d.attempt, refusal)
            if refusal is None and slot is not None:
                self.quota.acquire(d.tenant_id)  # held from acceptance, so a burst is counted at once
                cancel = self.cancels.register(d.job_id, d.attempt)  # now: a cancel may follow at once
                self._unreported.add((d.job_id, d.attempt))
                task = self._jobs.spawn(self._run(d, slot, cancel), name=f"job:{d.job_id}")
                # released when the task ends, even one cancelled before it started (a close)
                task.add_done_callback(lambda _, d=d: self._settle(d))

    def _ended(self, d: Dispatch, started: float, err: TetherError | None) -> None:
        assert self.reporter is not None
        self._unreported.discard((d.job_id, d.attempt))
        self.reporter.attempt_ended(d, started, err)

    def _settle(self, d: Dispatch) -> None:
        self.cancels.release(d.job_id, d.attempt)
        self.quota.release(d.tenant_id)
        if (d.job_id, d.attempt) in self._unreported:  # cancelled before its first step (a close)
            self._ended(d, time.time(), WorkerFailed(f"worker {self.worker_id} stopped; job handed back"))

    def _refusal(self, d: Dispatch, slot: CachedModel | None) -> TetherError | None:
        if self.state is not WorkerState.RUNNING:
            return NoCapacity(f"worker {self.worker_id} is {self.state}")
        if slot is None or slot.state is ModelState.FAILED:
            return ModelUnknown(f"worker {self.worker_id} does not serve {d.model_id}:{d.version}")
        if not self.cache.can_serve(slot.spec.key):
            return NoCapacity(f"worker {self.worker_id} cannot load {d.model_id}:{d.version} now: model memory is busy")
        if self.fleet_box.key is None and is_sealed(d.input):  # another worker may hold the fleet key
            return NoCapacity(f"worker {self.worker_id} holds no fleet key for a sealed input")
        if len(self._jobs) >= self.settings.worker_concurrency:
            return NoCapacity(f"worker {self.worker_id} is full ({len(self._jobs)} jobs)")
        return self.quota.check(d.tenant_id, len(self._jobs))

    async def _run(self, d: Dispatch, slot: CachedModel, cancel: CancelToken) -> None:
        started = time.time()
        hop = telemetry.child_headers(d.trace)
        assert self.chunks is not None
        stream = self.chunks.stream(d.job_id, d.attempt, d.resume.seq if d.resume else 0)
        try:
            with telemetry.span("worker.run", hop, job_id=d.job_id, model=d.model_id):
                opened = self.fleet_box.open(d.input)  # a sealed (end-to-end encrypted) input is opened here
                request = RunRequest(
                    job_id=d.job_id,
                    input=opened.input,
                    params=generation_params(d.params),
                    on_delta=None if is_sealed(d.input) else stream.on_delta,  # no plaintext chunks for it
                    resume=Resume(text=d.resume.text, token_ids=d.resume.token_ids) if d.resume else None,
                    cancel=cancel,
                )
                raise_if_cancelled(cancel, d.job_id)  # a cancel that overtook the dispatch
                cold = slot.state is not ModelState.WARM  # the job waits for a load: a cache miss
                async with self.cache.use(slot.spec.key) as runtime:
                    out = await runtime.run(request)
                raise_if_cancelled(cancel, d.job_id)  # runtimes that cannot stop midway stop here
            await self.chunks.flush()  # every chunk goes out before the final result
            result = ResultMessage(
                job_id=d.job_id,
                status=ResultStatus.COMPLETED,
                tenant_id=d.tenant_id,
                model_id=d.model_id,
                version=d.version,
                result=opened.seal_output(out.output),
                worker_id=self.worker_id,
                attempts=d.attempt,
                usage=Usage(
                    tokens_in=out.tokens_in,
                    tokens_out=out.tokens_out,
                    finish_reason=out.finish_reason,
                    ttft_ms=None if out.ttft_s is None else round(out.ttft_s * 1000, 2),
                    cold_start=cold or None,
                ),
                started_at=started,
                finished_at=time.time(),
            )
            assert self.js is not None
            raise_if_cancelled(cancel, d.job_id)
            await publish_final(self.js, result, hop, budget_s=max(5.0, d.deadline - time.time()))
        except asyncio.CancelledError:
            # stopped before finishing (drain grace expired): hand the job back for re-placement now;
            # its chunks go out first, so the next attempt resumes after everything the client saw
            with contextlib.suppress(Exception):
                await self.chunks.flush()
            self._ended(d, started, WorkerFailed(f"worker {self.worker_id} stopped; job handed back"))
            raise
        except Exception as exc:
            err = exc if isinstance(exc, TetherError) else WorkerFailed(f"{type(exc).__name__}: {exc}")
            self.failed += 1
            log.warning(  # one line per field would push this file past its seam
                "attempt failed",
                extra={"job": d.job_id, "attempt": d.attempt, "error": err.message,
                       "correlation_id": hop[telemetry.CORRELATION_ID]},
            )
            self._ended(d, started, err)
        else:
            self.completed += 1
            self._ended(d, started, None)


def _key(text: str) -> tuple[str, str]:
    """``model[:version]`` (as in TETHER_PIN_MODELS) -> (model, version)."""
    model_id, _, version = text.strip().partition(":")
    return model_id, version or "1"
