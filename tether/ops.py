"""Operator commands: replay RESULTS, manage API keys, benchmark ``tether.infer``.

Replays use an ordered push consumer (ephemeral, no acks, flow-controlled), so they never disturb
the durable consumers the services use; a progress bar shows how far through the stream they are.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from streams import RESULTS
from tether import client, codec, subjects
from tether.connection import connect
from tether.errors import InvalidRequest, TetherError
from tether.settings import Settings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> datetime:
    """``10m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC when it names no zone)."""
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip())
    if m:
        return datetime.fromtimestamp(now - float(m.group(1)) * _UNIT_S[m.group(2)], UTC)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(f"--since {text!r}: use 30s, 10m, 2h, 1d or an ISO 8601 time", field="since") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )


async def replay(
    nc: Client, stream: str, subject: str, since: datetime | None, emit: Callable[[dict[str, Any]], None], console: Console
) -> int:
    """Deliver every message of ``stream`` on ``subject`` (from ``since``) to ``emit``; returns the count."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    total = info.state.messages
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if since is not None:
        stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=stamp)
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
    count = 0
    with _progress(console) as bar:
        task = bar.add_task(f"replaying {stream}", total=total or None)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except TimeoutError:
                    break
                emit(codec.decode(msg.data, codec.content_type_of(msg.headers)))
                count += 1
                pending = msg.metadata.num_pending
                bar.update(task, completed=count, total=count + pending)
                if pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    return count


async def cmd_replay(settings: Settings, *, since: str | None, as_json: bool) -> int:
    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    when = parse_since(since) if since else None  # a bad value is a usage error before any connection
    nc = await connect(settings.url, name="tether-replay", max_reconnect_attempts=1)
    try:
        stream, subject = RESULTS, subjects.RESULTS_ALL
        emit = (lambda r: print(json.dumps(r), flush=True)) if as_json else rows.append
        count = await replay(nc, stream, subject, when, emit, console)
    finally:
        await nc.close()
    if not as_json:
        table = Table(title=f"{count} results")
        for col in ("job", "tenant", "model", "status", "attempts", "worker", "finished"):
            table.add_column(col)
        for r in rows:
            finished = r.get("finishedAt")
            table.add_row(
                str(r.get("jobId")), str(r.get("tenantId")), f"{r.get('modelId')}:{r.get('version')}",
                str(r.get("status") or (r.get("error") or {}).get("code", "")), str(r.get("attempts", "")),
                str(r.get("workerId") or ""),
                time.strftime("%H:%M:%S", time.localtime(finished)) if isinstance(finished, int | float) else "",
            )
        Console().print(table)
    return 0


async def cmd_keys(settings: Settings, action: str, *, tenant: str | None, name: str, digest: str | None) -> int:
    from services.gateway.http.apikeys import ApiKeys
    from streams.kv import apply_kv, kv_buckets

    nc = await connect(settings.url, name="tether-keys", max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        await apply_kv(js, kv_buckets(settings, nc._server_info))
        keys = await ApiKeys.open(js)
        if action == "add":
            key, record = await keys.add(tenant or "", name)
            print(key)
            print(f"tenant {record.tenant}, digest {record.digest[:12]} (the key is shown once)", flush=True)
        elif action == "list":
            for k in await keys.list():
                created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at))
                print(f"{k.digest[:12]}  {k.tenant:<20} {k.name:<20} {created}")
        else:
            gone = await keys.revoke(digest or "")
            print(f"revoked {gone} key(s)")
            return 0 if gone else 1
    finally:
        await nc.close()
    return 0


async def cmd_bench(settings: Settings, *, model: str, n: int, concurrency: int, text: str) -> int:
    """``n`` requests, ``concurrency`` at a time, through ``tether.infer``; prints latency and throughput."""
    console = Console()
    nc = await connect(settings.url, name="tether-bench", max_reconnect_attempts=1)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    todo = iter(range(n))
    try:
        with _progress(console) as bar:
            task = bar.add_task(f"bench {model}", total=n)

            async def loop() -> None:
                for _ in todo:
                    t0 = time.perf_counter()
                    try:
                        await client.infer(nc, model=model, input=text, tenant="bench", timeout=60)
                        latencies.append((time.perf_counter() - t0) * 1000)
                    except TetherError as exc:
                        errors[exc.code] = errors.get(exc.code, 0) + 1
                    except TimeoutError:
                        errors["timeout"] = errors.get("timeout", 0) + 1
                    bar.advance(task)

            t0 = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t0
    finally:
        await nc.close()
    if latencies:
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
        console.print(
            f"{len(latencies)} ok, {sum(errors.values())} failed {errors or ''} in {elapsed:.2f}s: "
            f"{len(latencies) / elapsed:.1f} req/s; latency ms p50 {q[49]:.2f} p95 {q[94]:.2f} p99 {q[98]:.2f}"
        )
    else:
        console.print(f"no request succeeded: {errors}")
    return 0 if latencies and not errors else 1
