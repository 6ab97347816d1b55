"""Canary rollouts through the whole system and the real CLI: a failing canary rolls itself back,
a healthy one steps up to promotion (DESIGN.md: "progressive canary ... via control topic")."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from nats.aio.client import Client

from tests.conftest import System, start_system
from tests.proc_helpers import run_tether, tether_env
from tether import client
from tether.errors import TetherError
from tether.settings import Settings


async def _cli(settings: Settings, *args: str) -> list[dict[str, Any]]:
    env = tether_env(settings.home, url=settings.url)
    r = await asyncio.to_thread(run_tether, "canary", *args, env=env)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


async def _gateway_sees(system: System, state: str, timeout: float = 10.0) -> None:
    """Until the gateway has re-read the canary table the CLI wrote (it is told on
    tether.control.canary.echo, then reads the KV bucket: a slow machine can take longer than a beat)."""
    router = system.gateway.admission.canaries  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while (c := router.table.get("echo")) is None or c.state != state:
        assert time.monotonic() < deadline, (state, router.table)
        await asyncio.sleep(0.02)


async def _ask(nc: Client, i: int) -> dict[str, Any] | str:
    try:
        return await client.infer(nc, model="echo", version="1", input=f"x{i}", timeout=20)
    except TetherError as exc:
        return exc.code


async def test_a_failing_canary_rolls_itself_back(settings: Settings, nc: Client) -> None:
    settings = dataclasses.replace(settings, max_attempts=1)
    system = await start_system(settings, ["echo:1", "echo:2;fail=always"])
    try:
        [started] = await _cli(
            settings, "start", "echo", "--stable", "1", "--canary", "2", "--weight", "50",
            "--budget", "0.2", "--min-requests", "4",
        )
        assert started["state"] == "running" and started["weight"] == 50.0
        await _gateway_sees(system, "running")
        outcomes = [await _ask(nc, i) for i in range(30)]
        failed = [o for o in outcomes if isinstance(o, str)]
        assert failed and all(code in ("worker_failed", "dead_lettered") for code in failed), failed
        [listed] = await _cli(settings, "list")
        assert listed["state"] == "rolled_back" and listed["weight"] == 0.0, listed
        assert "exceeds the budget" in listed["reason"]
        after = [await _ask(nc, i) for i in range(10)]  # every request on the stable version again
        assert all(isinstance(r, dict) and r["version"] == "1" and not r.get("canary") for r in after), after
    finally:
        await system.close()


async def test_a_healthy_canary_steps_up_to_promotion(settings: Settings, nc: Client) -> None:
    system = await start_system(settings, ["echo:1", "echo:3"])
    try:
        await _cli(
            settings, "start", "echo", "--stable", "1", "--canary", "3", "--weight", "50",
            "--step", "50", "--min-requests", "3",
        )
        await _gateway_sees(system, "running")
        replies = [await _ask(nc, i) for i in range(40)]
        assert all(isinstance(r, dict) for r in replies), replies
        on_canary = [r for r in replies if isinstance(r, dict) and r["version"] == "3"]
        assert on_canary and all(r["canary"] is True and r["requestedVersion"] == "1" for r in on_canary)
        [listed] = await _cli(settings, "list")
        assert listed["state"] == "promoted" and listed["weight"] == 100.0, listed
        last = replies[-5:]  # promoted: the stable version's requests all run on the canary
        assert all(isinstance(r, dict) and r["version"] == "3" for r in last), last
        [aborted] = await _cli(settings, "abort", "echo", "--reason", "enough")
        assert aborted["state"] == "rolled_back" and aborted["reason"] == "enough"
        await _gateway_sees(system, "rolled_back")
        assert (await client.infer(nc, model="echo", version="1", input="y", timeout=20))["version"] == "1"
    finally:
        await system.close()


async def test_clients_that_stop_waiting_early_do_not_count_against_a_canary(settings: Settings, nc: Client) -> None:
    """A client's own short timeoutS ends its wait, not the job: that says nothing about the version."""
    system = await start_system(settings, ["echo:1;delay_ms=300", "echo:2;delay_ms=300"])
    try:
        opts = {"--weight": "100", "--budget": "0.2", "--min-requests": "4"}
        await _cli(settings, "start", "echo", "--stable", "1", "--canary", "2", *(x for kv in opts.items() for x in kv))
        await _gateway_sees(system, "running")
        codes = []
        for i in range(8):
            try:
                await client.infer(nc, model="echo", version="1", input=f"x{i}", timeout=20, params={"timeoutS": 0.05})
            except TetherError as exc:
                codes.append(exc.code)
        assert codes == ["timeout"] * 8  # each client gave up before its job (which still ran) finished
        [listed] = await _cli(settings, "list")
        assert listed["state"] == "running", listed
        ok = await client.infer(nc, model="echo", version="1", input="patient", timeout=20)
        assert ok["version"] == "2" and ok.get("canary")
    finally:
        await system.close()


async def test_a_step_verdict_counted_before_an_operator_change_does_not_undo_it(
    settings: Settings, nc: Client
) -> None:
    """The window was counted under weight 10; the operator sets 2 before the step to 20 is written:
    the operator's 2 stays (a rollback verdict would still apply: it is always safe)."""
    from services.gateway.canary import KEY, Canary, CanaryRouter, decode_table, encode_table
    from streams.kv import CANARY_BUCKET, apply_kv, kv_buckets

    js = nc.jetstream()
    await apply_kv(js, kv_buckets(settings))
    kv = await js.key_value(CANARY_BUCKET)
    base = Canary(model_id="m", stable="1", canary="2", weight=10.0, step=10.0, min_requests=2)
    await kv.put(KEY, encode_table({"m": base}))
    router = CanaryRouter()
    await router.start(nc, js)
    try:
        judged = router.table["m"]
        router.record("m", "2", None)
        decided = router.record("m", "2", None)
        assert decided is not None and decided.weight == 20.0
        await kv.put(KEY, encode_table({"m": dataclasses.replace(base, weight=2.0, reason="set by an operator")}))
        await router.apply(decided, judged)
        assert decode_table((await kv.get(KEY)).value)["m"].weight == 2.0
    finally:
        await router.stop()
