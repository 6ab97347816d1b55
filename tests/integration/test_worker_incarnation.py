"""A worker restarted under the same key (same worker id) while running a job: the scheduler sees
the new incarnation in its heartbeats and re-places the job at once, not at the execution timeout.
Real nats-server, real SQLite, in-process roles; the first run "dies" by losing its connection."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from services.worker.runtimes.catalog import parse_model_spec
from services.worker.service import Worker
from tests.conftest import start_system
from tether import subjects
from tether.settings import Settings

MODEL = "echo;delay_ms=1500"


async def _until(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_worker_restarted_with_the_same_id_gets_its_lost_job_retried_at_once(
    settings: Settings, nc: Client
) -> None:
    system = await start_system(settings, [MODEL])
    first = system.workers[0]
    assert isinstance(first, Worker) and first.nc is not None
    seen: dict[str, list[dict[str, Any]]] = {}

    async def on_result(msg: Msg) -> None:
        body = json.loads(msg.data)
        seen.setdefault(body["jobId"], []).append(body)

    try:
        await nc.subscribe(subjects.RESULTS_ALL, cb=on_result)
        await nc.flush()
        await nc.jetstream().publish(
            "tether.jobs.demo.echo.1", json.dumps({"jobId": "reborn", "input": "hi"}).encode()
        )
        await _until(lambda: len(first._jobs) > 0, 15)  # running on the first incarnation
        await first.nc.close()  # as kill -9: no report, no goodbye
        second = Worker(settings, identity=first.identity, specs=[parse_model_spec(MODEL)])
        system.workers.append(second)
        await second.start()
        await second.wait_ready()
        assert second.worker_id == first.worker_id
        restarted = time.monotonic()
        # the attempt's execution budget is 30 s + 0.5 s per token: waiting it out fails this
        await _until(lambda: "reborn" in seen, 12)
        assert time.monotonic() - restarted < 12
        assert [r["status"] for r in seen["reborn"]] == ["completed"]
        assert seen["reborn"][0].get("attempts") == 2
    finally:
        await system.close()
