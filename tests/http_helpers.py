"""HTTP gateway fixtures: the in-process system plus ``HttpGateway`` on a free port, and an API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from services.gateway.http.apikeys import ApiKeys
from services.gateway.http.server import HttpGateway
from services.worker.runtimes.catalog import parse_model_spec
from services.worker.service import Worker
from tests.conftest import System, start_system
from tether.settings import Settings


@dataclass
class HttpSystem:
    system: System
    http: HttpGateway
    client: httpx.AsyncClient
    key: str  # an API key of tenant "acme"

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


HOLD_KEYS = 8
HELD = "held"  # announced by a worker that then leaves (``held_http_system``): its jobs wait in the queue


@asynccontextmanager
async def http_system(settings: Settings, models: list[str], **kw: object) -> AsyncIterator[HttpSystem]:
    """Workers serving ``models``, a scheduler, a gateway, and HTTP on a free port with a client."""
    from tether.security import ensure_dev_trust

    ensure_dev_trust(settings, extra_workers=HOLD_KEYS)  # hold_model's keys are allowlisted from the start
    system = await start_system(settings, models, **kw)  # type: ignore[arg-type]
    http = HttpGateway(settings, gateway=system.gateway, port=0)  # type: ignore[arg-type]
    client = httpx.AsyncClient(base_url="http://unused", timeout=30.0)
    try:
        await http.start()
        assert http.gateway.js is not None
        key, _ = await (await ApiKeys.open(http.gateway.js)).add("acme", "test")
        client.base_url = httpx.URL(http.url)
        yield HttpSystem(system, http, client, key)
    finally:
        await client.aclose()
        await http.close()
        await system.close()


async def hold_model(settings: Settings, model: str) -> None:
    """Announce ``model`` (an echo runtime) from a worker that then drains away: the model stays known
    to gateways, and its jobs wait in JOBS (up to ``queue_wait_s``) for a worker that never comes."""
    from tether.security import ensure_dev_trust

    # an allowlisted key of its own (the last development worker key), not the system's worker
    identity = [i for i in ensure_dev_trust(settings, extra_workers=HOLD_KEYS) if i.role == "worker"][-1]
    w = Worker(settings, identity=identity, specs=[parse_model_spec(f"{model}:1=none;task=echo")])
    await w.start()
    await w.wait_ready()
    await w.drain(0.1)


@asynccontextmanager
async def held_http_system(settings: Settings) -> AsyncIterator[HttpSystem]:
    """``http_system`` serving ``echo``, plus the model ``HELD`` whose jobs wait in the queue."""
    async with http_system(settings, ["echo"]) as system:
        await hold_model(settings, HELD)
        yield system
