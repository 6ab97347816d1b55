"""Opening the store from several processes at once, and a role whose store cannot open."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.proc_helpers import run_tether, tether_env
from tether.natsserver import free_port
from tether.store import JobKey, JobStore, SqliteBackend, open_store
from tether.store.schema import LATEST
from tether.store.sqlite import CHECKPOINT_EVERY_S


async def test_stores_opened_together_all_migrate_once(tmp_path: Path) -> None:
    # Schedulers starting together used to race: each read version 0, each applied migration 1,
    # and all but one died on UNIQUE(schema_migrations.version).
    url = f"sqlite:///{tmp_path / 'tether.db'}"
    stores = [open_store(url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        rows = await stores[0].backend.query("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, LATEST + 1))
        assert await stores[3].counts() == {}
    finally:
        for s in stores:
            await s.close()


def test_a_role_whose_store_cannot_migrate_exits_with_the_error(tmp_path: Path) -> None:
    # A `jobs` table from something else: migration 1's index on jobs(status, updated_at) fails.
    db = tmp_path / "foreign.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE jobs (x INTEGER)")
    env = tether_env(tmp_path, url=f"nats://127.0.0.1:{free_port()}", TETHER_STORE=f"sqlite:///{db}")
    r = run_tether("scheduler", env=env, timeout=60)  # it used to hang on the store's reader thread
    assert r.returncode != 0, r.stderr
    assert "SQLite transaction failed" in r.stderr and "no such column" in r.stderr, r.stderr[-2000:]



async def test_wal_is_checkpointed_off_the_event_loop_every_second(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "tether.db")
    store = JobStore(backend)
    await store.open()
    try:
        for i in range(50):
            await store.enqueue(
                JobKey(job_id=f"j{i}", tenant_id="t", model_id="echo", version="1", correlation_id=f"c{i}", created_at=1.0),
                1.0,
            )
        wal_pages, copied = await backend.checkpoint()
        assert wal_pages > 0 and copied == wal_pages  # nothing else writing: the whole WAL is copied
        before = backend.checkpoints
        await asyncio.sleep(CHECKPOINT_EVERY_S * 2.5)
        assert backend.checkpoints >= before + 1  # the periodic one ran
        assert await store.counts() == {"QUEUED": 50}
    finally:
        await store.close()
    stopped_at = backend.checkpoints
    await asyncio.sleep(CHECKPOINT_EVERY_S * 1.5)
    assert backend.checkpoints == stopped_at  # closed: no checkpoint task left behind
