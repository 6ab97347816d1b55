"""Worker admission and local limits on a real nats-server: QuotaGuard refusals, the model cache's
announcements and LRU eviction through the pipeline, hardware tiers in placement, and --quantize
refused at start on a machine without CUDA."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import Dispatch, DispatchBatch, ReportBatch
from services.worker import memory
from services.worker.device_support import cuda_available
from services.worker.runtimes.catalog import build_runtime, parse_model_spec
from services.worker.service import Worker
from tests.conftest import start_system
from tests.proc_helpers import run_tether, tether_env
from tests.tiny_models import build_tiny_gpt2
from tether import client, codec, errors, subjects
from tether.dispatch_auth import DispatchSigner
from tether.security import ensure_dev_trust
from tether.settings import Settings
from tether.signed import read_unverified


def _dispatch(job: str, tenant: str, model: str, report_to: str) -> Dispatch:
    return Dispatch(
        job_id=job,
        attempt=1,
        retry_token=f"{job}#1",
        tenant_id=tenant,
        model_id=model,
        version="1",
        input="hello",
        params={"maxNewTokens": 400},
        report_to=report_to,
        scheduler_id="s-test",
        deadline=time.time() + 60,
    )


async def test_quota_guard_refuses_a_tenant_over_its_local_limit(tmp_path: Path, settings: Settings, nc: Client) -> None:
    tiny = build_tiny_gpt2(tmp_path / "tiny")
    settings.worker_tenant_limit, settings.admission_bench = 1, False
    worker_key, scheduler_key, *_ = ensure_dev_trust(settings)
    worker = Worker(settings, identity=worker_key, specs=[parse_model_spec(f"tiny:1={tiny}")])
    await worker.start()
    await worker.wait_ready()
    try:
        inbox = nc.new_inbox()
        acks: dict[str, Any] = {}
        done = asyncio.Event()

        async def on_reports(msg: Any) -> None:
            batch = ReportBatch.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
            for ack in batch.acks:
                acks[ack.job_id] = ack
            for report in batch.reports:
                acks.setdefault(report.job_id, report)
            if len(acks) == 3:
                done.set()

        await nc.subscribe(f"{inbox}.*", cb=on_reports)  # the worker reports on <reportTo>.<its id>
        items = [_dispatch("q-1", "acme", "tiny", inbox), _dispatch("q-2", "acme", "tiny", inbox),
                 _dispatch("q-3", "other", "tiny", inbox)]  # fmt: skip
        batch = DispatchBatch(scheduler_id="s-test", report_to=inbox, items=items)
        sealed = DispatchSigner(scheduler_key).seal(worker.worker_id, codec.encode(batch.wire(), codec.MSGPACK))
        await nc.publish(subjects.dispatch_subject(worker.worker_id), sealed)
        await asyncio.wait_for(done.wait(), 30)
        refused = acks["q-2"]
        assert refused.accepted is False and refused.error.code == "no_capacity" and refused.error.retryable
        assert "acme" in refused.error.message and "limit 1" in refused.error.message
        assert getattr(acks["q-1"], "accepted", True) and getattr(acks["q-3"], "accepted", True)
        assert worker.quota.refused == 1
    finally:
        await worker.close()


async def test_cache_announces_states_and_evicts_the_lru_model_through_the_pipeline(
    tmp_path: Path, settings: Settings, nc: Client
) -> None:
    dirs = {n: build_tiny_gpt2(tmp_path / n, seed=i) for i, n in enumerate(("m-a", "m-b", "m-c"))}
    probe = build_runtime(parse_model_spec(f"probe:1={dirs['m-a']}"))
    probe.load()
    size = memory.model_bytes(probe)
    probe.close()
    settings.model_memory_mb = 2.5 * size / (1024 * 1024)
    settings.pin_models = ["m-a:1"]
    settings.admission_bench = False
    seen: list[tuple[str, str]] = []

    async def on_model(msg: Any) -> None:
        ann = read_unverified(msg.data)  # the signed announcement's payload
        if ann["state"] != "loading" or not ann.get("progress"):
            seen.append((ann["modelId"], ann["state"]))

    await nc.subscribe(subjects.MODELS_ALL, cb=on_model)
    await nc.flush()
    system = await start_system(settings, [f"{n}:1={d}" for n, d in dirs.items()])
    try:
        assert seen == [("m-a", "loading"), ("m-a", "warm"), ("m-b", "loading"), ("m-b", "warm"), ("m-c", "evicted")]
        worker = system.workers[0]
        assert worker.cache.models[("m-a", "1")].pinned
        reply = await client.infer(nc, model="m-c", input="hello", params={"maxNewTokens": 4}, timeout=60)
        assert reply["usage"]["tokensOut"] == 4 and reply["workerId"] == system.workers[0].worker_id  # type: ignore[attr-defined]
        await nc.flush()
        assert seen[5:] == [("m-b", "evicted"), ("m-c", "loading"), ("m-c", "warm")]
        states = {k[0]: str(m.state) for k, m in worker.cache.models.items()}
        assert states == {"m-a": "warm", "m-b": "evicted", "m-c": "warm"}
        beat = worker.presence.build()
        served = {m.model_id: m for m in beat.models}
        assert served["m-c"].size_mb is not None and served["m-a"].pinned
        assert beat.rss_mb and beat.rss_mb > 0 and beat.cpu_percent is not None
    finally:
        await system.close()


async def _wait_benchmarked(system: Any, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        entry = system.scheduler.fleet.get(system.workers[0].worker_id)
        if entry is not None and entry.presence.gflops is not None:
            return float(entry.presence.gflops)
        assert time.monotonic() < deadline, "no benchmark in the heartbeats"
        await asyncio.sleep(0.1)


async def test_jobs_asking_for_a_higher_tier_are_not_placed_on_a_tier_1_worker(
    settings: Settings, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_TIER2_GFLOPS", "1e9")  # nothing here reaches tier 2
    monkeypatch.setenv("TETHER_TIER_MIN_GFLOPS", "0.01")
    settings.queue_wait_s, settings.admission_bench = 2.0, True
    system = await start_system(settings, ["echo"])
    try:
        gflops = await _wait_benchmarked(system)
        assert gflops > 0.01
        ok = await client.infer(nc, model="echo", input="tier one", params={"minTier": 1}, timeout=30)
        assert ok["result"] == "tier one"
        with pytest.raises(errors.NoCapacity) as refused:
            await client.infer(nc, model="echo", input="tier two", params={"minTier": 2}, timeout=30)
        assert refused.value.retry_after_s == settings.heartbeat_s  # when a worker may have announced itself
    finally:
        await system.close()


async def test_a_worker_under_the_minimum_is_not_admitted(
    settings: Settings, nc: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TETHER_TIER_MIN_GFLOPS", "1e9")
    settings.queue_wait_s, settings.admission_bench = 2.0, True
    system = await start_system(settings, ["echo"])
    try:
        await _wait_benchmarked(system)
        with caplog.at_level("WARNING"), pytest.raises(errors.NoCapacity):
            await client.infer(nc, model="echo", input="anyone?", timeout=30)
        rejected = [r for r in caplog.records if r.getMessage() == "worker not admitted"]
        assert rejected and "under the minimum" in rejected[0].__dict__["reason"]
    finally:
        await system.close()


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without CUDA")
def test_worker_with_quantize_and_no_cuda_refuses_to_start(tmp_path: Path) -> None:
    tiny = build_tiny_gpt2(tmp_path / "tiny")
    env = tether_env(tmp_path, url="nats://127.0.0.1:1")
    proc = run_tether("worker", "--quantize", "8bit", "--models", f"tiny:1={tiny}", env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "CUDA" in proc.stderr and "--quantize 8bit" in proc.stderr


def _benchmark_threads() -> list[int]:
    """Threads whose stack is inside the admission benchmark right now."""
    out = []
    for ident, frame in sys._current_frames().items():
        f = frame
        while f is not None:
            if f.f_code.co_filename.endswith("services/worker/admission.py"):
                out.append(ident)
                break
            f = f.f_back
    return out


async def test_a_worker_closed_during_its_benchmark_stops_the_benchmark_thread(settings: Settings) -> None:
    settings.admission_bench = True
    system = await start_system(settings, ["echo"])
    try:
        worker = system.workers[0]
        deadline = time.monotonic() + 30
        while not _benchmark_threads():  # its thread has started measuring (it runs about 2 s here)
            assert worker.benchmark is None and time.monotonic() < deadline, "the benchmark never ran"
            await asyncio.sleep(0.005)
        await worker.close()  # type: ignore[attr-defined]
        closed = time.monotonic()
        while _benchmark_threads():  # one matmul or one 64 MB slice, not the rest of the probe
            assert time.monotonic() - closed < 1.0, "the benchmark thread went on after the worker closed"
            await asyncio.sleep(0.01)
    finally:
        await system.close()
