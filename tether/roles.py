"""Run one role as a long-lived process: start it, wait for SIGINT/SIGTERM, drain it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tether.identity import Identity
from tether.settings import Settings

log = logging.getLogger(__name__)


class Role(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def _serve(role: Role, stop: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stopping.set)
    starting = asyncio.ensure_future(role.start())
    signalled = asyncio.ensure_future(stopping.wait())
    try:
        # a signal while starting (NATS unreachable: the connection retries forever) ends the start
        await asyncio.wait([starting, signalled], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            log.info("stopped while starting")
            await role.close()
            return
        starting.result()  # raises what the start raised
    except BaseException:
        await role.close()  # release what a partial start opened, so the process exits with the error
        raise
    finally:
        signalled.cancel()
    ended: asyncio.Event | None = getattr(role, "stopped", None)  # a role that can end itself (drain)
    waits = [asyncio.ensure_future(stopping.wait())]
    if ended is not None:
        waits.append(asyncio.ensure_future(ended.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    log.info("stopping")
    await stop()


async def run_gateway(settings: Settings, *, http: bool = False) -> None:
    """The NATS entrypoint (``tether.infer``); with ``http`` also the HTTP API on ``TETHER_HTTP_PORT``."""
    from services.gateway.service import Gateway

    if http:
        from services.gateway.http.server import HttpGateway

        hg = HttpGateway(settings)
        await _serve(hg, hg.close)
        return
    gw = Gateway(settings)
    await _serve(gw, gw.close)


async def run_scheduler(settings: Settings) -> None:
    from services.scheduler.service import Scheduler

    sch = Scheduler(settings)
    await _serve(sch, sch.drain)


def worker_specs(settings: Settings, *, dtype: str | None = None, quantize: str | None = None) -> list[Any]:
    """The worker's model specs, with ``--dtype`` / ``--quantize`` applied, checked against this machine.

    Raises ``InvalidRequest`` naming the option when the machine cannot serve a spec
    (e.g. ``--quantize`` without a CUDA GPU): the worker refuses to start.
    """
    from dataclasses import replace

    from services.worker.device_support import check_spec
    from services.worker.runtimes.catalog import parse_model_spec

    cache = str(settings.home / "cache" / "converted")  # GGUF converted once, reloaded in < 1 s after
    specs = []
    for text in settings.models:
        spec = parse_model_spec(text, convert_cache=cache)
        if spec.runtime == "transformers":
            spec = replace(spec, dtype=dtype or spec.dtype, quantize=quantize or spec.quantize)
        check_spec(spec)
        specs.append(spec)
    return specs


async def run_worker(
    settings: Settings, *, identity: Identity, grace_s: float = 30.0, specs: list[Any] | None = None
) -> None:
    from services.worker.service import Worker

    w = Worker(settings, identity=identity, specs=specs if specs is not None else worker_specs(settings))

    async def stop() -> None:
        await w.drain(grace_s)

    await _serve(w, stop)
