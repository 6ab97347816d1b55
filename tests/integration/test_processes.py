"""Tether as real OS processes: `tether up`, the CLI, and each role in its own process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.errors import Error as NatsError

from tests.proc_helpers import (
    Procs,
    gone,
    poll,
    port_free,
    port_listening,
    processes_mentioning,
    run_tether,
    tether_env,
)
from tether import client
from tether.connection import connect
from tether.errors import TetherError
from tether.natsserver import colocated_gomaxprocs, free_port
from tether.workerid import worker_identity, worker_key_path

READY_S = 90.0  # a loaded 2-core machine starts four processes and imports torch-free code


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()

SEED_CURL = """curl -XPOST http://localhost:3000/infer \\
  -H 'Content-Type: application/json' \\
  -d '{"tenantId":"demo-tenant","modelId":"phi-2","version":"1.0","input":"What
  is the capital of France?"}'"""


def _logs(home: Path) -> str:
    parts = []
    for log in sorted((home / "logs").glob("*.log")):
        parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts)


def test_tether_up_serves_the_cli_and_stops_without_orphans(tmp_path: Path, procs: Procs) -> None:
    home = tmp_path / "home"
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    http_port = free_port()
    up = procs.start(
        "up",
        "--no-demo",
        env=tether_env(
            home,
            port=port,
            TETHER_MODELS="echo",
            TETHER_HEARTBEAT_S="1",
            TETHER_HTTP_PORT=str(http_port),
            TETHER_MODEL_ALIASES="phi-2:1.0=echo",  # the seed's model name, served by echo here
        ),
        name="up",
    )
    cli = tether_env(home, url=url, COLUMNS="250")

    def hello() -> subprocess.CompletedProcess[str] | None:
        if up.poll() is not None:
            raise AssertionError(f"tether up exited {up.returncode}:\n{procs.output(up)}\n{_logs(home)}")
        r = run_tether("infer", "hello", "--model", "echo", "--timeout", "10", env=cli)
        return r if r.returncode == 0 and r.stdout.strip() == "hello" else None

    poll(hello, timeout=READY_S, interval=1.0, what="`tether infer hello` answered")
    children = procs.record_children(up)
    names = sorted(" ".join(c.cmdline()[-2:]) for c in children)
    assert sum("nats-server" in c.name() for c in children) == 1, names
    server_env = next(c for c in children if "nats-server" in c.name()).environ()
    if "GOMAXPROCS" not in os.environ:  # it shares the machine with the roles: half the cores' worth of Ps
        assert server_env.get("GOMAXPROCS") == str(colocated_gomaxprocs()), server_env.get("GOMAXPROCS")
    assert sum("tether.cli" in " ".join(c.cmdline()) for c in children) == 3, names

    # the seed pilot's own curl example, as written but for the port
    seed = SEED_CURL.replace("localhost:3000", f"localhost:{http_port}")
    r = subprocess.run(["bash", "-c", seed], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    seed_reply = json.loads(r.stdout)
    assert seed_reply["result"] == "What\n  is the capital of France?" and seed_reply["jobId"], seed_reply
    assert seed_reply["requestedModelId"] == "phi-2" and seed_reply["modelId"] == "echo"

    r = run_tether("infer", "as json", "--model", "echo", "--json", env=cli)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert {"jobId", "result", "modelId", "version", "workerId"} <= reply.keys(), reply
    assert reply["result"] == "as json" and reply["modelId"] == "echo" and reply["version"] == "1"
    assert reply["workerId"] == worker_identity(home)  # the worker's key lives under TETHER_HOME
    allowlist = (home / "trust" / "allowlist").read_text()  # development keys, allowlisted on first start
    assert f"# {reply['workerId']}" in allowlist and "scheduler" in allowlist and "publisher" in allowlist
    job_id = reply["jobId"]

    r = run_tether("infer", "x", "--model", "nope", env=cli)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "error [model_unknown]" in r.stderr

    def status() -> dict[str, Any] | None:
        r = run_tether("status", "--json", env=cli)
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        return snap if [w["health"] for w in snap["workers"]] == ["HEALTHY"] else None

    snap = poll(status, timeout=30, what="one HEALTHY worker in `tether status`")
    assert {"modelId": "echo", "version": "1", "state": "warm"}.items() <= snap["workers"][0]["models"][0].items()
    assert snap["workers"][0]["workerId"] == reply["workerId"]
    assert {"waiting", "inFlight", "redelivered"} <= snap["queue"].keys(), snap

    def completed() -> dict[str, Any] | None:
        r = run_tether("jobs", "show", job_id, env=cli)
        assert r.returncode == 0, (r.stdout, r.stderr)
        shown = json.loads(r.stdout)
        return shown if shown["job"] and shown["job"]["status"] == "COMPLETED" else None

    shown = poll(completed, timeout=30, what=f"job {job_id} COMPLETED in the store")
    assert len(shown["attempts"]) == 1, shown
    assert shown["result"]["result"] == "as json", shown
    placement = shown["job"]["placement"]  # why this worker: the score and each weighted term
    assert placement["policy"] == "affinity" and placement["worker"] == reply["workerId"], placement
    assert {"region", "device", "load", "warm", "reliability", "rtt"} == placement["terms"].keys(), placement

    r = run_tether("jobs", "list", env=cli)
    assert r.returncode == 0, r.stderr
    assert job_id in r.stdout, r.stdout

    assert procs.stop(up, timeout=60) == 0, procs.output(up)
    out = procs.output(up)
    assert url in out, out
    assert "request tether.infer" in out and '"modelId":"echo"' in out, out
    assert "stopped: no process left behind" in out, out
    poll(lambda: all(gone(c.pid) for c in children), timeout=15, what="children of tether up gone")
    assert processes_mentioning(str(home)) == []  # e.g. no nats-server with its store under home
    poll(lambda: port_free(port) and not port_listening(port), timeout=15, what=f"port {port} free")


def test_help_and_usage_exit_codes(tmp_path: Path) -> None:
    env = tether_env(tmp_path)
    for args in (["--help"], ["infer", "--help"]):
        r = run_tether(*args, env=env)
        assert r.returncode == 0, (args, r.stderr)
        assert "usage: tether" in r.stdout
    r = run_tether("infer", env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "usage:" in r.stderr


def test_infer_without_a_server_fails_fast(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    r = run_tether("infer", "x", "--model", "echo", env=tether_env(tmp_path, url=url), timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "error [unavailable]" in r.stderr and "Traceback" not in r.stderr, r.stderr


async def _infer(url: str, text: str) -> dict[str, Any]:
    nc = await connect(url, name="test-processes")
    try:
        return await client.infer(nc, model="echo", input=text, timeout=10)
    finally:
        await nc.close()


def _try_infer(url: str, text: str) -> dict[str, Any] | None:
    try:
        reply = asyncio.run(_infer(url, text))
    except (TetherError, NatsError, OSError, TimeoutError):
        return None
    return reply if reply.get("result") == text else None


def test_separate_role_processes_and_a_stable_worker_id(tmp_path: Path, procs: Procs) -> None:
    home = tmp_path / "home"
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    nats = procs.start("nats", env=tether_env(home, port=port), name="nats")
    poll(lambda: port_listening(port), timeout=30, what=f"nats-server on {port}")
    poll(lambda: "listening on" in procs.output(nats), timeout=30, what="`tether nats` announced")

    env = tether_env(home, url=url, TETHER_HEARTBEAT_S="1", TETHER_MODELS="echo")
    for role in ("worker", "scheduler"):  # security is on: the worker's key must be allowlisted
        made = run_tether("keys", "gen", "--role", role, "--allow", env=env)
        assert made.returncode == 0, made.stderr
    scheduler = procs.start("scheduler", env=env, name="scheduler")
    worker = procs.start("worker", "--models", "echo", env=env, name="worker")
    gateway = procs.start("gateway", env=env, name="gateway")
    roles = [scheduler, worker, gateway]

    def answered(text: str) -> Any:
        def go() -> dict[str, Any] | None:
            for p in [nats, *roles]:
                if p.poll() is not None:
                    raise AssertionError(f"pid {p.pid} exited {p.returncode}:\n{procs.output(p)}")
            return _try_infer(url, text)

        return go

    first = poll(answered("first"), timeout=READY_S, interval=1.0, what="a reply through separate roles")
    assert worker_key_path(home).is_file()
    worker_id = worker_identity(home)
    assert first["workerId"] == worker_id

    assert procs.stop(worker, timeout=60) == 0, procs.output(worker)
    worker = procs.start("worker", "--models", "echo", env=env, name="worker")
    roles[1] = worker
    second = poll(answered("second"), timeout=READY_S, interval=1.0, what="a reply from the restarted worker")
    assert second["workerId"] == worker_id  # same key, same id across restarts

    # `tether drain` over NATS: the worker process finishes, announces, and exits on its own
    drained = run_tether("drain", worker_id, "--grace", "5", env=env)
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout)["draining"] is True
    poll(lambda: worker.poll() is not None, timeout=30, what="the drained worker process exited")
    assert worker.returncode == 0, procs.output(worker)
    assert "drain ordered" in procs.output(worker)

    for p in (gateway, scheduler, worker, nats):
        assert procs.stop(p, timeout=60) == 0, procs.output(p)
    poll(lambda: port_free(port) and not port_listening(port), timeout=15, what=f"port {port} free")
