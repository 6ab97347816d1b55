"""``tether up``: the whole system on one machine, for development and the demo.

Creates development keys and an allowlist under ``TETHER_HOME`` on first start
(security stays on; ``--insecure`` skips the allowlist, with a warning).
Starts nats-server (unless ``TETHER_NATS_URL`` points at one), then a
scheduler, a worker and a gateway as child processes, waits until the models
are warm, prints where everything listens with a working example, asks the
demo question, and supervises the children (a crashed child is restarted)
until Ctrl-C / SIGTERM, when it stops the children in order and then the
server: no orphans.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tether.natsserver import NatsServer, colocated_gomaxprocs, die_with_parent
from tether.settings import DEFAULT_NATS_PORT, Settings

DEMO_MODELS = ["echo", "smollm2-135m-instruct", "all-minilm-l6-v2"]
DEMO_QUESTION = "What is the capital of France?"
ROLES: tuple[tuple[str, ...], ...] = (("scheduler",), ("worker",), ("gateway", "--http"))
# The seed pilot's curl example asks for phi-2 version 1.0: served here by SmolLM2 (override with the variable).
SEED_ALIASES = "phi-2:1.0=smollm2-135m-instruct"


@dataclass(slots=True)
class Child:
    role: str
    log: Path
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = field(default=0.0)
    fast_exits: int = 0  # exits in a row within FAST_EXIT_S of starting
    restart_at: float = 0.0  # when a restart is due (monotonic), after its backoff


def _spawn(child: Child, env: dict[str, str]) -> None:
    with open(child.log, "ab") as out:  # the child has its own copy of the descriptor
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "tether.cli", child.role, *child.args],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=die_with_parent,  # gone with `up`, even when it is SIGKILLed
        )
    child.started = time.monotonic()


def _stop(child: Child, grace: float) -> None:
    proc = child.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def up(settings: Settings, *, demo: bool = True, ready_timeout: float = 600.0) -> int:
    # Signals first: one that arrives while nats-server starts must still stop it (it runs in its own
    # session, so dying here would leave it behind).
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        loop.add_signal_handler(sig, stopping.set)
    home = settings.home.resolve()
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["TETHER_HOME"] = str(home)
    env.setdefault("TETHER_MODELS", ",".join(DEMO_MODELS))
    env.setdefault("TETHER_MODEL_ALIASES", SEED_ALIASES)
    if not settings.insecure:  # development keys and a matching allowlist, made on first start
        from tether.security import ensure_dev_trust

        idents = ensure_dev_trust(replace(settings, home=home))
        print(
            f"keys          {home / 'keys'}   allowlist {settings.allowlist or home / 'trust' / 'allowlist'}"
        )
        print("              " + ", ".join(f"{i.role} {i.node_id}" for i in idents), flush=True)
    models = [m for m in env["TETHER_MODELS"].split(",") if m]

    server: NatsServer | None = None
    if settings.nats_url is None:
        server = NatsServer(
            store_dir=home / "jetstream",
            port=settings.nats_port,
            log_file=logs / "nats-server.log",
            die_with_parent=True,
            gomaxprocs=colocated_gomaxprocs() if settings.nats_gomaxprocs is None else settings.nats_gomaxprocs,
        )
        try:
            server.start()  # stops what it started if it fails
        except (RuntimeError, OSError) as exc:  # e.g. the port is taken (a `tether up` already running?)
            print(f"error: nats-server did not start: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"nats-server   {server.url}   (JetStream data in {home / 'jetstream'})", flush=True)
    url = server.url if server else settings.url
    env["TETHER_NATS_URL"] = url

    children = [Child(role, logs / f"{role}.log", tuple(args)) for role, *args in ROLES]
    started = time.time()
    try:
        for child in children:
            _spawn(child, env)
            print(
                f"{child.role:<13} pid {child.proc.pid if child.proc else '?'}   log {child.log}", flush=True
            )
        ready = asyncio.create_task(_wait_ready(settings, url, models, ready_timeout, since=started))
        while not stopping.is_set():
            if ready.done():
                if ready.exception() is not None:
                    print(f"not ready: {ready.exception()}", file=sys.stderr, flush=True)
                    return 1
                await _announce(url, models, settings, demo)
                ready = None  # type: ignore[assignment]
                break
            _supervise(children, env)
            await asyncio.sleep(0.2)
        while not stopping.is_set():
            _supervise(children, env)
            try:
                await asyncio.wait_for(stopping.wait(), 0.5)
            except TimeoutError:
                pass
        print("stopping ...", flush=True)
        return 0
    except GaveUp as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for role in ("gateway", "scheduler", "worker"):
            for child in children:
                if child.role == role:
                    _stop(child, grace=35.0)
        if server is not None:
            server.stop()
        print("stopped: no process left behind", flush=True)


#: How long ``tether up`` tries to reach a ``TETHER_NATS_URL`` server before it gives up.
CONNECT_WAIT_S = 30.0
#: A child that exits this soon after starting is failing to start; restarts back off, then give up.
FAST_EXIT_S = 10.0
MAX_FAST_EXITS = 5


class GaveUp(Exception):
    """A child kept exiting right after it started."""


def _supervise(children: list[Child], env: dict[str, str]) -> None:
    """Restart children that exited: at once after a long run, with a growing delay after fast exits."""
    now = time.monotonic()
    for child in children:
        if child.proc is None or child.proc.poll() is None:
            continue
        if child.restart_at == 0.0:  # just noticed
            code = child.proc.returncode
            child.fast_exits = child.fast_exits + 1 if now - child.started < FAST_EXIT_S else 0
            if child.fast_exits >= MAX_FAST_EXITS:
                raise GaveUp(f"{child.role} exited {child.fast_exits} times right after starting; see {child.log}")
            delay = 0.0 if child.fast_exits == 0 else min(30.0, 0.5 * 2**child.fast_exits)
            child.restart_at = now + delay
            print(
                f"{child.role} exited with {code}; restarting in {delay:.0f}s (#{child.restarts + 1}), "
                f"see {child.log}",
                flush=True,
            )
        if now >= child.restart_at:
            child.restarts += 1
            child.restart_at = 0.0
            _spawn(child, env)


async def _wait_ready(
    settings: Settings, url: str, models: list[str], timeout: float, *, since: float
) -> None:
    """Until a worker announces every model warm and the gateway answers an echo request."""
    from schemas import ModelState
    from services.worker.runtimes.catalog import parse_model_spec
    from tether import client
    from tether.connection import connect
    from tether.fleet import FleetView

    specs = [parse_model_spec(m) for m in models]
    wanted = {(s.model_id, s.version) for s in specs}
    deadline = time.monotonic() + timeout
    try:  # the first connection fails after a while instead of retrying forever
        nc = await asyncio.wait_for(connect(url, name="tether-up"), min(timeout, CONNECT_WAIT_S))
    except TimeoutError:
        raise TimeoutError(f"cannot reach NATS at {url} within {min(timeout, CONNECT_WAIT_S):.0f}s") from None
    try:
        fleet = FleetView.from_settings(settings)
        await fleet.start(nc, nc.jetstream())
        while True:
            current = [e for e in fleet.workers() if e.presence.started_at >= since]  # not a previous run's
            states = {(m.model_id, m.version): m.state for e in current for m in e.presence.models}
            failed = sorted(
                f"{m}:{v}" for (m, v), st in states.items() if st == ModelState.FAILED and (m, v) in wanted
            )
            if failed:
                raise RuntimeError(f"models failed to load: {failed} (see the worker log)")
            warm = {key for key in wanted if states.get(key) == ModelState.WARM}
            if warm == wanted:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"models not warm after {timeout:.0f}s: {sorted(wanted - warm)}")
            await asyncio.sleep(0.2)
        probe = next((s for s in specs if s.model_id == "echo"), specs[0] if specs else None)
        while probe is not None:  # the gateway answers, through the whole pipeline
            try:
                await client.infer(
                    nc, model=probe.model_id, version=probe.version, input="ready?",
                    params={"maxNewTokens": 1}, timeout=30.0,
                )
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def _announce(url: str, models: list[str], settings: Settings, demo: bool) -> None:
    from services.worker.runtimes.catalog import parse_model_spec
    from tether import client
    from tether.connection import connect

    specs = [parse_model_spec(m) for m in models]
    spec = next((x for x in specs if x.model_id == "echo"), specs[0] if specs else None)
    model_id, version = (spec.model_id, spec.version) if spec is not None else ("echo", "1")
    body = json.dumps(  # a model this system serves (echo when it does: it answers at once)
        {"tenantId": "demo", "modelId": model_id, "version": version, "input": "hello"}, separators=(",", ":")
    )
    print(
        f"\nTether is up. Models: {', '.join(models)}\n"
        f"  NATS    {url}   request subject: tether.infer\n"
        f"  try     {_try_line(models, url)}\n"
        f"  or      nats --server {url} request tether.infer '{body}'\n"
        f"  HTTP    http://127.0.0.1:{settings.http_port}   dashboard: / , API: /docs\n"
        f"  curl    curl -XPOST http://localhost:{settings.http_port}/infer -H 'Content-Type: application/json' "
        f"-d '{body}'\n"
        f"  status  {_env_prefix(url)}{_tether()} status\n",
        flush=True,
    )
    if not demo or "smollm2-135m-instruct" not in ",".join(models):
        return
    nc = await connect(url, name="tether-up-demo")
    try:
        t0 = time.perf_counter()
        reply = await client.infer(
            nc, model="smollm2-135m-instruct", input=DEMO_QUESTION, params={"maxNewTokens": 32}, timeout=120
        )
        dt = time.perf_counter() - t0
        print(
            f"demo  Q: {DEMO_QUESTION}\n      A: {reply['result'].strip()}   "
            f"({reply['workerId']}, {dt:.2f}s)\n\nCtrl-C stops everything.",
            flush=True,
        )
    except Exception as exc:
        print(f"demo request failed: {exc}", flush=True)
    finally:
        await nc.close()


def _try_line(models: list[str], url: str) -> str:
    """A ``tether infer`` line that works against this system: the demo model when it runs, else the first."""
    from services.worker.runtimes.catalog import parse_model_spec

    ids = [parse_model_spec(m).model_id for m in models]
    model = "smollm2-135m-instruct" if "smollm2-135m-instruct" in ids else (ids[0] if ids else "echo")
    text = DEMO_QUESTION if model == "smollm2-135m-instruct" else "hello"
    return f'{_env_prefix(url)}{_tether()} infer "{text}" --model {model}'


def _env_prefix(url: str) -> str:
    return "" if url == f"nats://127.0.0.1:{DEFAULT_NATS_PORT}" else f"TETHER_NATS_URL={url} "


def _tether() -> str:
    """``tether`` when the shell finds this one, else its path (``.venv/bin/tether`` after ``make run``)."""
    import shutil

    mine = Path(sys.executable).parent / "tether"
    if not mine.exists() or shutil.which("tether") == str(mine):
        return "tether"
    rel = os.path.relpath(mine)  # .venv/bin/tether: a path the shell runs as it is
    return str(mine) if rel.startswith("..") else rel
