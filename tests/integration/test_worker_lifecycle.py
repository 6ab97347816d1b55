"""Worker lifecycle: a stop during a drain waits for the drain instead of cutting it short."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client

from tests.conftest import start_system
from tether.settings import Settings


async def test_a_stop_during_a_drain_returns_only_once_the_worker_has_closed(
    settings: Settings, nc: Client
) -> None:
    system = await start_system(settings, ["echo;delay_ms=1500"])
    worker = system.workers[0]
    try:
        await nc.jetstream().publish("tether.jobs.demo.echo.1", json.dumps({"jobId": "d-1", "input": "x"}).encode())
        for _ in range(100):
            if worker._jobs:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        ordered = asyncio.create_task(worker.drain(30.0))  # type: ignore[attr-defined]  # as over NATS
        await asyncio.sleep(0.1)
        await asyncio.wait_for(worker.drain(30.0), 20)  # type: ignore[attr-defined]  # SIGTERM's stop
        assert worker.stopped.is_set()  # type: ignore[attr-defined]
        assert worker.completed == 1  # type: ignore[attr-defined]  # the running job finished first
        await ordered
    finally:
        await system.close()
