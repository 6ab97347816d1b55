"""Run one role as a long-lived process: start it, wait for SIGINT/SIGTERM, drain it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from tether.settings import Settings

log = logging.getLogger(__name__)


class Role(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def _serve(role: Role, stop: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await role.start()
    except BaseException:
        await role.close()  # release what a partial start opened, so the process exits with the error
        raise
    await stopping.wait()
    log.info("stopping")
    await stop()


async def run_gateway(settings: Settings) -> None:
    from services.gateway.service import Gateway

    gw = Gateway(settings)
    await _serve(gw, gw.close)


async def run_scheduler(settings: Settings) -> None:
    from services.scheduler.service import Scheduler

    sch = Scheduler(settings)
    await _serve(sch, sch.drain)


async def run_worker(settings: Settings, *, worker_id: str, grace_s: float = 30.0) -> None:
    from services.worker.runtimes.catalog import parse_model_spec
    from services.worker.service import Worker

    cache = str(settings.home / "cache" / "converted")  # GGUF converted once, reloaded in < 1 s after
    w = Worker(
        settings,
        worker_id=worker_id,
        specs=[parse_model_spec(m, convert_cache=cache) for m in settings.models],
    )

    async def stop() -> None:
        await w.drain(grace_s)

    await _serve(w, stop)
