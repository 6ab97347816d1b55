"""Role lifecycle: a stop during a worker's drain waits for the drain; a role still connecting stops on a signal."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from tests.conftest import start_system
from tests.proc_helpers import tether_env
from tether.natsserver import NatsServer, free_port
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_role_still_connecting_stops_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    env = tether_env(tmp_path, url=f"nats://127.0.0.1:{free_port()}", TETHER_INSECURE="1")  # nothing listens
    proc = subprocess.Popen([sys.executable, "-m", "tether.cli", "scheduler"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)  # importing, then retrying the connection
        assert proc.poll() is None
        proc.send_signal(sig)
        assert proc.wait(timeout=15) is not None
    finally:
        if proc.poll() is None:
            proc.kill()


def _store_threads() -> set[threading.Thread]:
    """aiosqlite's connection threads: one per open store, each keeping the interpreter from exiting."""
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name and t.is_alive()}


async def test_a_scheduler_whose_start_fails_closes_what_it_had_opened(tmp_path: Path) -> None:
    from services.scheduler.service import Scheduler, SchedulerState

    before = _store_threads()
    settings = Settings(home=tmp_path, nats_url=f"nats://127.0.0.1:{free_port()}",  # nothing listens
                        store=f"sqlite:///{tmp_path / 'tether.db'}")
    scheduler = Scheduler(settings, scheduler_id="s-fails")
    with pytest.raises(TimeoutError):  # the store is open, the connection is still being retried
        await asyncio.wait_for(scheduler.start(), 3)
    assert scheduler.state is SchedulerState.STOPPED
    for _ in range(50):  # the store's thread ends once its close has run
        if _store_threads() <= before:
            break
        await asyncio.sleep(0.05)
    assert _store_threads() <= before, "the store opened by the failed start is still open"
    with pytest.raises(RuntimeError):  # a closed role does not start again half-way
        await scheduler.start()


async def test_an_http_gateway_whose_port_is_taken_closes_its_gateway_and_store(settings: Settings) -> None:
    import socket

    from services.gateway.http.server import HttpGateway

    before = _store_threads()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http = HttpGateway(settings, host="127.0.0.1", port=taken.getsockname()[1])
        with pytest.raises(OSError):
            await http.start()
    assert http.gateway.nc is not None and http.gateway.nc.is_closed  # its own gateway's connection
    assert http.store is None and _store_threads() <= before


def test_a_worker_stopped_while_a_model_loads_exits_without_waiting_for_the_load(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """SIGTERM during a long load (a large download): the process ends in seconds, not when the load would."""
    env = tether_env(tmp_path, url=nats_server.url, TETHER_INSECURE="1")
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether.cli", "worker", "--models", "echo;load_ms=120000"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "worker started" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # its load (120 s) is under way
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(timeout=30) == 0, log_path.read_text()
        assert time.monotonic() - t0 < 20
        assert "worker stopped" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
