"""Resume, not restart: a worker SIGKILLed mid-stream, and the job continues on another worker from the
delivered prefix. The client's chunk sequence has no repeat and no gap, and the text equals an
uninterrupted greedy run. Real processes (`tether worker`), real nats-server, in-process scheduler."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from services.scheduler.service import Scheduler
from services.worker.runtimes import GenerationParams, RunRequest, Task, TransformersRuntime
from tests.proc_helpers import Procs, tether_env
from tests.tiny_models import build_tiny_gpt2
from tether import subjects
from tether.fleet import FleetView
from tether.natsserver import NatsServer
from tether.security import ensure_dev_trust
from tether.settings import Settings

PROMPT = "hello"
TOKENS = 500


async def _expected(model_dir: Path) -> str:
    runtime = TransformersRuntime("tiny", "1", Task.GENERATE, model_dir)
    await asyncio.to_thread(runtime.load)
    try:
        out = await runtime.run(
            RunRequest(job_id="ref", input=PROMPT, params=GenerationParams(max_new_tokens=TOKENS))
        )
        return str(out.output)
    finally:
        await asyncio.to_thread(runtime.close)


async def _both_warm(nc: Client, settings: Settings, timeout: float = 90.0) -> None:
    fleet = FleetView.from_settings(settings)
    await fleet.start(nc, nc.jetstream())
    try:
        deadline = time.monotonic() + timeout
        while len(fleet.candidates("tiny", "1")) < 2:
            assert time.monotonic() < deadline, "workers did not come up warm"
            await asyncio.sleep(0.1)
    finally:
        await fleet.stop()


async def _stream_job(nc: Client, job_id: str) -> tuple[list[dict[str, Any]], asyncio.Future[dict[str, Any]]]:
    """Publish a streaming job of ``TOKENS`` tokens; its chunks so far (at least 3) and its final result."""
    chunks: list[dict[str, Any]] = []
    result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def on_chunk(msg: Any) -> None:
        chunks.append(json.loads(msg.data))

    async def on_result(msg: Any) -> None:
        if not result.done():
            result.set_result(json.loads(msg.data))

    await nc.subscribe(subjects.chunks_subject(job_id), cb=on_chunk)
    await nc.subscribe(subjects.result_subject(job_id), cb=on_result)
    await nc.flush()
    body = {"jobId": job_id, "input": PROMPT, "params": {"maxNewTokens": TOKENS, "chat": False}}
    await nc.jetstream().publish(subjects.job_subject("demo", "tiny", "1"), json.dumps(body).encode())
    deadline = time.monotonic() + 60
    while len(chunks) < 3:
        assert time.monotonic() < deadline, "no chunks streamed"
        await asyncio.sleep(0.002)
    return chunks, result


@pytest.mark.timeout(240)
async def test_killed_worker_mid_stream_resumes_on_another_without_repeats_or_gaps(
    tmp_path: Path, nats_server: NatsServer, settings: Settings, nc: Client
) -> None:
    procs = Procs(tmp_path)
    try:
        await _kill_mid_stream_and_check(tmp_path, nats_server, settings, nc, procs)
    finally:
        procs.cleanup()


async def _kill_mid_stream_and_check(
    tmp_path: Path, nats_server: NatsServer, settings: Settings, nc: Client, procs: Procs
) -> None:
    model_dir = build_tiny_gpt2(tmp_path / "tiny")
    env = tether_env(
        tmp_path,
        url=nats_server.url,
        TETHER_MODELS=f"tiny:1={model_dir}",
        TETHER_HEARTBEAT_S=str(settings.heartbeat_s),
        TETHER_ADMISSION_BENCH="0",
    )
    keys = [k for k in ensure_dev_trust(settings, extra_workers=1) if k.role == "worker"]  # allowlisted
    names = {"worker": keys[0].node_id, "worker-1": keys[1].node_id}
    workers = {wid: procs.start("worker", "--name", name, env=env, name=name) for name, wid in names.items()}
    expected = await _expected(model_dir)
    await _both_warm(nc, settings)
    scheduler = Scheduler(settings, scheduler_id="s-resume")
    await scheduler.start()
    try:
        chunks, result = await _stream_job(nc, "resume-1")
        victim = chunks[0]["workerId"]
        os.kill(workers[victim].pid, signal.SIGKILL)
        killed_after = sum(len(c["tokenIds"]) for c in chunks)

        final = await asyncio.wait_for(result, 120)
        await nc.flush()
    finally:
        await scheduler.close()

    survivor = next(w for w in workers if w != victim)
    assert final["status"] == "completed", final
    assert final["attempts"] == 2 and final["workerId"] == survivor, final
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), "a repeat or a gap in the stream"
    offsets = [c["offset"] for c in chunks]
    token_counts = [len(c["tokenIds"]) for c in chunks]
    assert all(offsets[i + 1] == offsets[i] + token_counts[i] for i in range(len(chunks) - 1))
    assert {c["workerId"] for c in chunks} == {victim, survivor}
    first_resumed = next(c for c in chunks if c["workerId"] == survivor)
    assert first_resumed["attempt"] == 2 and 0 < first_resumed["offset"] < TOKENS
    assert killed_after < TOKENS, "the worker finished before it was killed: nothing to resume"
    text = "".join(c["text"] for c in chunks)
    assert text == final["result"] == expected
    assert sum(token_counts) == TOKENS == final["usage"]["tokensOut"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("next_scheduler", ["same", "another"])
async def test_a_job_handed_back_to_wait_for_a_worker_still_resumes_after_the_delivered_prefix(
    tmp_path: Path, settings: Settings, nc: Client, next_scheduler: str
) -> None:
    """The only worker is drained mid-stream (a one-worker rolling restart): the job goes back to JetStream
    to wait for capacity, and the next worker continues after the prefix the client already has, also
    when another scheduler takes the job (the prefix is shared through the ``tether_resume`` bucket)."""
    from services.worker.runtimes.catalog import parse_model_spec
    from services.worker.service import Worker
    from tests.conftest import start_system

    model_dir = build_tiny_gpt2(tmp_path / "tiny")
    settings.admission_bench = False
    system = await start_system(settings, [f"tiny:1={model_dir}"])
    replacement: Worker | None = None
    try:
        chunks, result = await _stream_job(nc, "parked-1")
        await system.workers[0].drain(0.05)  # type: ignore[attr-defined]  # hands the job back at once
        sched = system.scheduler
        deadline = time.monotonic() + 30
        while sched.stats["requeued"] < 1:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the job was not handed back"
            await asyncio.sleep(0.01)
        if next_scheduler == "another":
            await sched.close()  # type: ignore[attr-defined]
            system.scheduler = Scheduler(settings, scheduler_id="s-next")
            await system.scheduler.start()  # type: ignore[attr-defined]
        keys = [k for k in ensure_dev_trust(settings, extra_workers=1) if k.role == "worker"]
        replacement = Worker(settings, identity=keys[1], specs=[parse_model_spec(f"tiny:1={model_dir}")])
        await replacement.start()
        final = await asyncio.wait_for(result, 120)
        await nc.flush()
    finally:
        if replacement is not None:
            await replacement.close()
        await system.close()

    assert final["status"] == "completed" and final["attempts"] == 2, final
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), "a repeat or a gap in the stream"
    offsets = [c["offset"] for c in chunks]
    token_counts = [len(c["tokenIds"]) for c in chunks]
    assert all(offsets[i + 1] == offsets[i] + token_counts[i] for i in range(len(chunks) - 1))
    first_resumed = next(c for c in chunks if c["attempt"] == 2)
    assert first_resumed["seq"] > 0 and first_resumed["offset"] > 0
    assert "".join(c["text"] for c in chunks) == final["result"]
