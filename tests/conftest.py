"""Fixtures: a real nats-server per test (free port, temp JetStream dir, infra/nats/dev.conf),
a real SQLite file, and the roles started in-process on their own connections."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import hypothesis  # noqa: F401  # imported early: CPython 3.11.7 can raise "AST constructor recursion
import pytest  # depth mismatch" when pytest's assertion rewriter compiles it late (at session finish)
import pytest_asyncio
from nats.aio.client import Client

from tether.connection import connect
from tether.natsserver import NatsServer, colocated_gomaxprocs
from tether.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Workers skip the start-up admission benchmark unless a test asks for it (``admission_bench``): its
# allocation probe commits up to 1 GB page by page, seconds of CPU per worker start that every test
# starting a worker (in-process, or a role process that inherits this) would otherwise pay.
os.environ.setdefault("TETHER_ADMISSION_BENCH", "0")

#: How long the test process may take to exit once the session is over.
EXIT_GRACE_S = 60.0
_exit_status = 0


#: An xdist worker waits this long at its session's end for threads still running to finish.
WORKER_THREAD_GRACE_S = 30.0
_workers_left_threads: list[str] = []  # in the xdist controller: what its workers reported


def _running(but: threading.Thread) -> list[threading.Thread]:
    """Non-daemon threads still running, other than ``but``."""
    return [t for t in threading.enumerate() if not t.daemon and t is not but]


def _threads_left(grace_s: float) -> list[str]:
    """Non-daemon threads other than this one still running after up to ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = _running(threading.current_thread())
        if not alive or time.monotonic() >= deadline:
            return [t.name for t in alive]
        alive[0].join(0.1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Serially, a thread left running is caught at exit (``pytest_unconfigure``). An xdist worker
    that does not exit is killed without its status reaching the run, so each worker reports the
    threads it leaves to the controller (``workeroutput``), which fails the run."""
    global _exit_status
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        left = _threads_left(WORKER_THREAD_GRACE_S)
        if left:
            workeroutput["threads_left"] = left
    elif _workers_left_threads:
        print(f"\ntest workers left threads running: {_workers_left_threads}", file=sys.stderr, flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    _exit_status = int(session.exitstatus)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist: a worker has finished; note the threads it reported left running."""
    left = getattr(node, "workeroutput", {}).get("threads_left")
    if left:
        _workers_left_threads.append(f"{node.gateway.id}: {', '.join(left)}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread left running (an unclosed store, a role that was never stopped) would keep the
    interpreter from exiting after the summary, and CI would wait for it until its own timeout.
    A daemon watchdog, armed when the interpreter starts to exit, dumps every thread's stack and
    ends the process instead; a clean exit ends the watchdog with it."""

    def watchdog() -> None:
        time.sleep(EXIT_GRACE_S)
        alive = [t.name for t in _running(threading.main_thread())]
        print(
            f"\nthe test process did not exit within {EXIT_GRACE_S:.0f} s of the session's end; "
            f"threads still running: {alive}",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stdout.flush()
        os._exit(_exit_status or 1)

    def arm() -> None:
        threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()

    # armed as the interpreter starts to exit (before it joins leftover threads), so a process that
    # runs pytest in-process and carries on is never ended by it
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(arm)
    else:
        arm()


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """One GGUF conversion cache for the run: the first SmolLM2 load converts (about 35 s here),
    every later one, in any test module or pytest-xdist worker, loads the converted checkpoint.
    Load under ``first_load_lock(gguf_cache)`` so two workers do not both convert."""
    base = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # an xdist worker: its base is one per worker, under the run's
        base = base.parent
    cache = base / "gguf-cache"
    cache.mkdir(exist_ok=True)
    return cache


def first_load_lock(cache: Path) -> filelock.FileLock:
    """Held while loading a model into ``cache``: whoever waits loads what the holder converted."""
    return filelock.FileLock(str(cache) + ".lock", thread_local=False)  # acquired on a thread, released on the loop


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(
        store_dir=tmp_path / "jetstream", log_file=tmp_path / "nats-server.log", die_with_parent=True,
        gomaxprocs=colocated_gomaxprocs(),  # it shares the machine with the roles, as under `tether up`
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_nats(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, NatsServer]]:
    """One nats-server (and home dir) shared by a test module's tests, for module-scoped systems."""
    home = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    server = NatsServer(
        store_dir=home / "jetstream", log_file=home / "nats-server.log", die_with_parent=True,
        gomaxprocs=colocated_gomaxprocs(),
    )
    server.start()
    try:
        yield home, server
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path, nats_server: NatsServer) -> Settings:
    return Settings(
        home=tmp_path,
        nats_url=nats_server.url,
        heartbeat_s=0.5,
        store=f"sqlite:///{tmp_path / 'tether.db'}",
        request_timeout_s=30.0,
        queue_wait_s=10.0,
        dispatch_ack_s=2.0,
        admission_bench=False,  # see TETHER_ADMISSION_BENCH above
    )


@pytest_asyncio.fixture
async def nc(settings: Settings) -> AsyncIterator[Client]:
    conn = await connect(settings.url, name="test-client")
    try:
        yield conn
    finally:
        await conn.close()


@dataclass
class System:
    """Gateway, scheduler and workers running in this process, each on its own NATS connection."""

    settings: Settings
    gateway: object = None
    scheduler: object = None
    workers: list[object] = field(default_factory=list)

    async def close(self) -> None:
        """Every role, even when one's close fails or is cut short (the scheduler's store thread)."""
        async with contextlib.AsyncExitStack() as stack:  # exits run last-in first-out: gateway first
            for role in (*self.workers, self.scheduler, self.gateway):
                if role is not None:
                    stack.push_async_callback(role.close)  # type: ignore[attr-defined]


async def start_system(
    settings: Settings, models: list[str], *, workers: int = 1, convert_cache: Path | None = None
) -> System:
    """Workers signed with development keys allowlisted under ``settings.home`` (``ensure_dev_trust``);
    ``convert_cache``: where built-in GGUF models keep their converted checkpoints."""
    from services.gateway.service import Gateway
    from services.scheduler.service import Scheduler
    from services.worker.runtimes.catalog import parse_model_spec
    from services.worker.service import Worker
    from tether.security import ensure_dev_trust

    system = System(settings)
    try:  # a start that fails half-way closes what it had started: no threads left to hang the exit
        keys = [i for i in ensure_dev_trust(settings, extra_workers=workers - 1) if i.role == "worker"]
        for i in range(workers):
            cache = str(convert_cache) if convert_cache else None
            w = Worker(settings, identity=keys[i], specs=[parse_model_spec(m, convert_cache=cache) for m in models])
            system.workers.append(w)
            await w.start()
            await w.wait_ready()
        system.scheduler = Scheduler(settings, scheduler_id="s-test")
        await system.scheduler.start()  # type: ignore[attr-defined]
        system.gateway = Gateway(settings, gateway_id="g-test")
        await system.gateway.start()  # type: ignore[attr-defined]
        await system.gateway.nc.flush()  # type: ignore[attr-defined]  # its subscriptions reached the server
    except BaseException:
        with contextlib.suppress(Exception):
            await system.close()
        raise
    return system


@pytest_asyncio.fixture
async def echo_system(settings: Settings) -> AsyncIterator[System]:
    system = await start_system(settings, ["echo"])
    try:
        yield system
    finally:
        await system.close()
