"""`tether keys`: key files, the allowlist file and the KV bucket, through the real command."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from streams import TRUST_BUCKET
from streams.kv import live_entries
from tests.proc_helpers import run_tether, tether_env
from tether.connection import connect
from tether.identity import Identity
from tether.natsserver import NatsServer
from tether.trust import kv_key, parse_allowlist


def test_gen_writes_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    env = tether_env(tmp_path)
    r = run_tether("keys", "gen", "--role", "publisher", env=env)
    assert r.returncode == 0, r.stderr
    key = tmp_path / "keys" / "publisher.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ident = Identity.load(key)
    assert ident.role == "publisher" and ident.public_key_b64 in r.stdout

    again = run_tether("keys", "gen", "--role", "publisher", env=env)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert Identity.load(key).public_key == ident.public_key

    forced = run_tether("keys", "gen", "--role", "publisher", "--force", env=env)
    assert forced.returncode == 0
    assert Identity.load(key).public_key != ident.public_key

    show = run_tether("keys", "show", "--name", "publisher", env=env)
    assert show.returncode == 0 and show.stdout.strip() == Identity.load(key).public_key_b64


def test_gen_allow_and_deny_edit_the_allowlist(tmp_path: Path) -> None:
    env = tether_env(tmp_path)
    assert run_tether("keys", "gen", "--role", "worker", "--name", "gpu1", "--allow", env=env).returncode == 0
    ident = Identity.load(tmp_path / "keys" / "gpu1.key")
    other = Identity.generate("scheduler")
    r = run_tether("keys", "allow", other.public_key_b64, "--role", "scheduler", env=env)
    assert r.returncode == 0, r.stderr
    assert run_tether("keys", "deny", ident.public_key_b64, "--note", "stolen", env=env).returncode == 0
    lists = parse_allowlist((tmp_path / "trust" / "allowlist").read_text())
    assert lists.allowed == {ident.public_key: {"worker"}, other.public_key: {"scheduler"}}
    assert lists.denied == {ident.public_key}
    listed = run_tether("keys", "list", env=env)
    assert other.public_key_b64 in listed.stdout and "(denied)" in listed.stdout
    bad = run_tether("keys", "allow", "not-a-key", "--role", "worker", env=env)
    assert bad.returncode != 0


def test_allow_and_deny_into_the_kv_bucket(tmp_path: Path, nats_server: NatsServer) -> None:
    env = tether_env(tmp_path, url=nats_server.url)
    ident = Identity.generate("worker")
    assert (
        run_tether("keys", "allow", ident.public_key_b64, "--role", "worker", "--kv", env=env).returncode == 0
    )
    assert run_tether("keys", "deny", ident.public_key_b64, "--kv", env=env).returncode == 0

    async def keys() -> list[str]:
        nc = await connect(nats_server.url, name="test")
        try:
            return sorted(await live_entries(nc.jetstream(), TRUST_BUCKET))
        finally:
            await nc.close()

    assert asyncio.run(keys()) == sorted(
        [kv_key("allow", ident.public_key, "worker"), kv_key("deny", ident.public_key)]
    )
    assert not (tmp_path / "trust" / "allowlist").exists()
