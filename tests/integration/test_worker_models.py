"""A model that fails to load is announced as failed and never served; the others still are."""

from __future__ import annotations

from nats.aio.client import Client

from schemas import ModelState
from services.worker.runtimes.catalog import parse_model_spec
from services.worker.service import Worker
from tether import client
from tether.security import ensure_dev_trust
from tether.signed import read_unverified


async def test_failed_load_is_announced_and_other_models_still_serve(settings, nc: Client, tmp_path) -> None:
    from services.gateway.service import Gateway
    from services.scheduler.service import Scheduler

    announcements: list[dict] = []

    async def collect(msg) -> None:
        announcements.append(read_unverified(msg.data))

    sub = await nc.subscribe("tether.models.>", cb=collect)
    broken = parse_model_spec(f"broken:1={tmp_path / 'no-such-model'}")
    ensure_dev_trust(settings)
    worker = Worker(settings, specs=[parse_model_spec("echo"), broken])
    scheduler, gateway = Scheduler(settings, scheduler_id="s-m"), Gateway(settings, gateway_id="g-m")
    try:
        await worker.start()
        await worker.wait_ready()
        await scheduler.start()
        await gateway.start()
        assert worker.slots[("broken", "1")].state is ModelState.FAILED
        assert worker.slots[("broken", "1")].runtime is None
        await nc.flush()
        states = [(a["modelId"], a["state"]) for a in announcements]
        assert ("broken", "loading") in states and ("broken", "failed") in states
        assert gateway.fleet.candidates("broken", "1") == []
        reply = await client.infer(nc, model="echo", input="still serving")
        assert reply["result"] == "still serving"
    finally:
        await sub.unsubscribe()
        await gateway.close()
        await scheduler.close()
        await worker.close()
