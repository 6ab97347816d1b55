"""Revocations in the TETHER_TRUST bucket keep arriving after a nats-server restart (the bucket is re-read)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from streams import TRUST_BUCKET, apply, topology
from tether.connection import connect
from tether.identity import Identity
from tether.natsserver import NatsServer
from tether.settings import Settings
from tether.trust import TrustStore, kv_key


async def _until(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_deny_written_after_a_server_restart_still_takes_effect(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "js", log_file=tmp_path / "nats.log", die_with_parent=True).start()
    settings = Settings(home=tmp_path / "home", nats_url=server.url)
    nc: Client | None = None
    trust = TrustStore()
    try:
        nc = await connect(settings.url, name="trust-resync")
        js = nc.jetstream()
        await apply(js, topology(settings))
        kv = await js.key_value(TRUST_BUCKET)
        await trust.start(js, bucket=TRUST_BUCKET, reload_s=0.5, resync_s=1.0)
        before, after = Identity.generate("worker"), Identity.generate("worker")
        await kv.put(kv_key("deny", before.public_key), b"x")
        assert await _until(lambda: trust.is_denied(before.public_key), 5)
        server.stop()
        await asyncio.sleep(0.5)
        server.start()
        assert await _until(lambda: nc.is_connected, 15)
        await asyncio.sleep(0.5)
        await (await js.key_value(TRUST_BUCKET)).put(kv_key("deny", after.public_key), b"x")
        assert await _until(lambda: trust.is_denied(after.public_key), 10), "the deny never took effect"
        assert trust.is_denied(before.public_key)
    finally:
        await trust.stop()
        if nc is not None:
            await nc.close()
        server.stop()
