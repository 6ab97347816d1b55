"""One store contract, run against every backend: SQLite always, rqlite where ``rqlited``
is installed (a real single-node server per test, on free ports, in a temp dir)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tether.errors import StoreError
from tether.store import JobKey, JobStatus, JobStore, SqlBackend, SqliteBackend, Stmt, retry_token
from tether.store.rqlite import RqliteBackend
from tether.store.schema import LATEST, MIGRATIONS

T0 = 1_700_000_000.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_rqlited(binary: str, data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    http_port, raft_port = _free_port(), _free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "-http-addr",
            f"127.0.0.1:{http_port}",
            "-raft-addr",
            f"127.0.0.1:{raft_port}",
            str(data_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rqlited exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return proc, f"rqlite://127.0.0.1:{http_port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"rqlited not ready within 30 s: {log_path.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "rqlite"])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], SqlBackend]]:
    """A factory of fresh backend objects that all point at the same database."""
    if request.param == "sqlite":
        db = tmp_path / "store.db"
        yield lambda: SqliteBackend(db)
        return
    binary = shutil.which("rqlited")
    if binary is None:
        pytest.skip("rqlited not on PATH: the rqlite store suite runs where rqlite is installed")
    proc, url = _start_rqlited(binary, tmp_path / "rqlite-data", tmp_path / "rqlited.log")
    try:
        yield lambda: RqliteBackend.from_url(url)
    finally:
        _stop(proc)


@pytest.fixture
async def store(make_backend: Callable[[], SqlBackend]) -> AsyncIterator[JobStore]:
    s = JobStore(make_backend())
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def key(job_id: str, *, created_at: float = T0) -> JobKey:
    return JobKey(
        job_id=job_id,
        tenant_id="tenant-a",
        model_id="echo",
        version="1",
        correlation_id=f"corr-{job_id}",
        idempotency_key=None,
        created_at=created_at,
    )


async def reserve(
    store: JobStore, job: JobKey, scheduler: str, now: float, *, lease: float = 30.0, worker: str = "w1"
) -> int | None:
    return await store.reserve(
        job,
        scheduler_id=scheduler,
        worker_id=worker,
        placement={"worker": worker, "device": "cpu"},
        lease_until=now + lease,
        expires_at=now + 60.0,
        now=now,
    )


async def _get(store: JobStore, job_id: str) -> dict:
    row = await store.get(job_id)
    assert row is not None, job_id
    return row


# ---- schema ---------------------------------------------------------------------------------


async def test_migrations_are_idempotent(make_backend: Callable[[], SqlBackend]) -> None:
    for _ in range(2):
        async with JobStore(make_backend()) as s:
            rows = await s.backend.query(
                "SELECT version FROM schema_migrations ORDER BY version", consistency="strong"
            )
            assert [r["version"] for r in rows] == list(range(1, LATEST + 1))
    async with JobStore(make_backend()) as s:
        await s.enqueue(key("j1"), T0)
        assert (await _get(s, "j1"))["status"] == "QUEUED"


async def test_version_3_reservations_move_into_attempts(make_backend: Callable[[], SqlBackend]) -> None:
    """A store written before migration 4 keeps its reservations, now read from the attempt rows."""
    backend = make_backend()
    await backend.connect()
    try:
        await backend.transaction(
            [Stmt("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")]
        )
        for version, name, statements in MIGRATIONS[:3]:
            await backend.transaction(
                [Stmt(sql) for sql in statements]
                + [Stmt("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, name))]
            )
        await backend.transaction(
            [
                Stmt(
                    "INSERT INTO attempts (job_id, attempt, worker_id, scheduler_id, status, reserved_at, finished_at) "
                    "VALUES ('j1', 1, 'w1', 's1', 'FAILED', ?, ?), ('j1', 2, 'w2', 's1', 'RESERVED', ?, NULL), "
                    "('j2', 1, 'w3', 's1', 'RESERVED', ?, NULL)",
                    (T0, T0 + 1, T0 + 2, T0 + 3),
                ),
                Stmt(
                    "INSERT INTO reservations (correlation_id, retry_token, job_id, worker_id, created_at, "
                    "expires_at, released_at) VALUES ('c1', 'j1#1', 'j1', 'w1', ?, ?, ?), "
                    "('c1', 'j1#2', 'j1', 'w2', ?, ?, NULL), ('c2', 'j2#1', 'j2', 'w3', ?, ?, NULL)",
                    (T0, T0 + 60, T0 + 1, T0 + 2, T0 + 62, T0 + 3, T0 + 63),
                ),
            ]
        )
    finally:
        await backend.close()
    async with JobStore(make_backend()) as s:
        rows = await s.reservations("j1")
        assert [(r["retry_token"], r["worker_id"], r["expires_at"], r["released_at"]) for r in rows] == [
            ("j1#1", "w1", T0 + 60, T0 + 1),
            ("j1#2", "w2", T0 + 62, None),
        ]
        assert {r["correlation_id"] for r in rows} == {"c1"}
        # each attempt gets its own job's reservation, not another job's with the same attempt number
        rows = await s.reservations("j2")
        assert [(r["correlation_id"], r["retry_token"], r["expires_at"], r["released_at"]) for r in rows] == [
            ("c2", "j2#1", T0 + 63, None)
        ]


# ---- reservations and leases ----------------------------------------------------------------


async def test_reserve_lease_blocks_other_scheduler_and_retry_increments(store: JobStore) -> None:
    job = key("j1")
    assert await reserve(store, job, "sched-a", T0) == 1
    row = await _get(store, "j1")
    assert (row["status"], row["attempts"], row["scheduler_id"], row["worker_id"]) == (
        "RESERVED",
        1,
        "sched-a",
        "w1",
    )
    assert row["placement"] == {"worker": "w1", "device": "cpu"}

    # another scheduler while the lease is live: nothing written
    assert await reserve(store, job, "sched-b", T0 + 1, worker="w2") is None
    row = await _get(store, "j1")
    assert (row["attempts"], row["scheduler_id"], row["worker_id"]) == (1, "sched-a", "w1")
    assert len(await store.attempts("j1")) == 1
    assert len(await store.reservations("j1")) == 1

    # the owning scheduler retries after a failure: attempt 2
    await store.fail_attempt("j1", 1, "worker_failed", "boom", T0 + 2)
    assert (await _get(store, "j1"))["status"] == "RETRYING"
    assert await reserve(store, job, "sched-a", T0 + 3, worker="w2") == 2

    attempts = await store.attempts("j1")
    assert [(a["attempt"], a["status"], a["worker_id"]) for a in attempts] == [
        (1, "FAILED", "w1"),
        (2, "RESERVED", "w2"),
    ]
    assert attempts[0]["error_code"] == "worker_failed"
    reservations = await store.reservations("j1")
    assert [r["retry_token"] for r in reservations] == [retry_token("j1", 1), retry_token("j1", 2)]
    assert reservations[0]["released_at"] == T0 + 2
    assert reservations[1]["released_at"] is None
    assert reservations[1]["correlation_id"] == "corr-j1"


async def test_lapsed_lease_lets_another_scheduler_take_over(store: JobStore) -> None:
    job = key("j1")
    assert await reserve(store, job, "sched-a", T0, lease=5.0) == 1
    assert await reserve(store, job, "sched-b", T0 + 4, worker="w2") is None  # still leased
    assert await reserve(store, job, "sched-b", T0 + 10, worker="w2") == 2  # lapsed
    row = await _get(store, "j1")
    assert (row["scheduler_id"], row["worker_id"], row["lease_until"]) == ("sched-b", "w2", T0 + 40)
    attempts = await store.attempts("j1")
    assert [(a["attempt"], a["scheduler_id"]) for a in attempts] == [(1, "sched-a"), (2, "sched-b")]
    # nobody watches sched-a's attempt any more: it is closed, not left RESERVED forever
    assert (attempts[0]["status"], attempts[0]["finished_at"]) == ("FAILED", T0 + 10)
    assert "abandoned" in attempts[0]["error_message"]
    assert (attempts[1]["status"], attempts[1]["finished_at"]) == ("RESERVED", None)


async def test_renewed_lease_keeps_other_scheduler_out(store: JobStore) -> None:
    job = key("j1")
    assert await reserve(store, job, "sched-a", T0, lease=5.0) == 1
    await store.renew_leases(["j1"], "sched-a", T0 + 100)
    await store.renew_leases(["j1"], "sched-b", T0 + 1)  # not the owner: no effect
    assert (await _get(store, "j1"))["lease_until"] == T0 + 100
    assert await reserve(store, job, "sched-b", T0 + 10) is None


async def test_reservations_unique_on_correlation_and_retry_token(store: JobStore) -> None:
    job = key("j1")
    assert await reserve(store, job, "sched-a", T0) == 1
    # rejected reserves (other live lease, finished job) write no reservation
    assert await reserve(store, job, "sched-b", T0 + 1) is None
    assert len(await store.reservations("j1")) == 1

    # a replayed reservation for the same attempt (its row in attempts) is absorbed ...
    dup = (
        "INSERT INTO attempts (job_id, attempt, worker_id, scheduler_id, status, reserved_at, "
        "correlation_id, retry_token, expires_at) VALUES (?,?,?,?,?,?,?,?,?)"
    )
    params = ("j1", 9, "w9", "sched-b", "RESERVED", T0 + 2, "corr-j1", retry_token("j1", 1), T0 + 99)
    await store._batcher.submit([Stmt(dup + " ON CONFLICT DO NOTHING", params)])
    rows = await store.reservations("j1")
    assert [(r["retry_token"], r["worker_id"]) for r in rows] == [(retry_token("j1", 1), "w1")]
    # ... and a plain duplicate insert is refused by the key
    with pytest.raises(StoreError):
        await store._batcher.submit([Stmt(dup, params)])
    # a retry token names one attempt: the same token under another correlation id is refused too
    with pytest.raises(StoreError):
        await store._batcher.submit([Stmt(dup, ("j1", 9, "w9", "sched-b", "RESERVED", T0 + 2, "other", *params[7:]))])
    assert len(await store.reservations("j1")) == 1
    indexes = await store.backend.query("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='attempts'")
    assert "attempts_by_token" in {r["name"] for r in indexes}
    assert "attempts_reservation" not in {r["name"] for r in indexes}  # migration 5 replaced it


async def test_reserve_refuses_finished_job(store: JobStore) -> None:
    job = key("j1")
    assert await reserve(store, job, "sched-a", T0) == 1
    assert await store.finish(job, JobStatus.COMPLETED, T0 + 1, attempt=1, worker_id="w1") is True
    assert await reserve(store, job, "sched-a", T0 + 2) is None
    row = await _get(store, "j1")
    assert (row["status"], row["attempts"]) == ("COMPLETED", 1)
    assert len(await store.reservations("j1")) == 1


# ---- state transitions ----------------------------------------------------------------------


async def test_finish_completes_once(store: JobStore) -> None:
    job = key("j1")
    assert await reserve(store, job, "sched-a", T0) == 1
    await store.mark_running("j1", 1, T0 + 1)
    assert await store.finish(job, JobStatus.COMPLETED, T0 + 2, attempt=1, worker_id="w1") is True
    assert await store.finish(job, JobStatus.COMPLETED, T0 + 3, attempt=1, worker_id="w1") is False
    assert (
        await store.finish(job, JobStatus.FAILED, T0 + 4, attempt=1, error_code="timeout", error_message="x")
        is False
    )
    row = await _get(store, "j1")
    assert (row["status"], row["finished_at"], row["error_code"], row["lease_until"]) == (
        "COMPLETED",
        T0 + 2,
        None,
        None,
    )
    (attempt,) = await store.attempts("j1")
    assert (attempt["status"], attempt["finished_at"]) == ("COMPLETED", T0 + 2)
    (res,) = await store.reservations("j1")
    assert res["released_at"] == T0 + 2


async def test_finish_creates_row_for_unseen_job(store: JobStore) -> None:
    job = key("ghost")
    ok = await store.finish(
        job, JobStatus.DEAD_LETTERED, T0 + 5, error_code="dead_lettered", error_message="no worker"
    )
    assert ok is True
    row = await _get(store, "ghost")
    assert (row["status"], row["attempts"], row["error_code"], row["error_message"]) == (
        "DEAD_LETTERED",
        0,
        "dead_lettered",
        "no worker",
    )
    assert (row["created_at"], row["finished_at"], row["tenant_id"]) == (T0, T0 + 5, "tenant-a")
    assert await store.attempts("ghost") == []
    assert await store.finish(job, JobStatus.COMPLETED, T0 + 6) is False


async def test_mark_running_only_for_current_reserved_attempt(store: JobStore) -> None:
    job = key("j1")
    assert await reserve(store, job, "sched-a", T0) == 1
    await store.mark_running("j1", 2, T0 + 1)  # not the current attempt
    assert (await _get(store, "j1"))["status"] == "RESERVED"
    await store.mark_running("j1", 1, T0 + 2)
    row = await _get(store, "j1")
    assert (row["status"], row["started_at"]) == ("RUNNING", T0 + 2)

    await store.fail_attempt("j1", 1, "worker_failed", "boom", T0 + 3)
    await store.mark_running("j1", 1, T0 + 4)  # no longer RESERVED
    row = await _get(store, "j1")
    assert (row["status"], row["started_at"]) == ("RETRYING", T0 + 2)

    assert await reserve(store, job, "sched-a", T0 + 5) == 2
    row = await _get(store, "j1")
    assert (row["status"], row["started_at"]) == ("RESERVED", None)  # the new attempt has not started
    await store.mark_running("j1", 1, T0 + 6)  # stale attempt
    assert (await _get(store, "j1"))["status"] == "RESERVED"


async def test_enqueue_is_noop_on_existing_rows(store: JobStore) -> None:
    await store.enqueue(key("q1"), T0 + 1)
    await store.enqueue(key("q1"), T0 + 9)
    row = await _get(store, "q1")
    assert (row["status"], row["attempts"], row["queued_at"], row["updated_at"]) == (
        "QUEUED",
        0,
        T0 + 1,
        T0 + 1,
    )

    assert await reserve(store, key("r1"), "sched-a", T0 + 2) == 1
    await store.enqueue(key("r1"), T0 + 3)
    row = await _get(store, "r1")
    assert (row["status"], row["attempts"], row["updated_at"]) == ("RESERVED", 1, T0 + 2)

    assert await store.counts() == {"QUEUED": 1, "RESERVED": 1}


async def test_listing_one_tenants_jobs_filters_before_the_limit(store: JobStore) -> None:
    """A tenant's dashboard lists its own newest jobs, however many newer ones other tenants have."""
    from dataclasses import replace

    await store.enqueue(replace(key("mine"), tenant_id="small"), T0)
    for i in range(5):
        await store.enqueue(key(f"other-{i}", created_at=T0 + 1 + i), T0 + 1 + i)
    assert [r["job_id"] for r in await store.list_jobs(limit=3)] == ["other-4", "other-3", "other-2"]
    assert [r["job_id"] for r in await store.list_jobs(limit=3, tenant="small")] == ["mine"]
    assert [r["job_id"] for r in await store.list_jobs(limit=2, tenant="small", status="QUEUED")] == ["mine"]
    assert await store.list_jobs(limit=2, tenant="small", status="FAILED") == []


async def test_timestamps_follow_the_lifecycle(store: JobStore) -> None:
    job = key("j1", created_at=T0)
    await store.enqueue(job, T0 + 1)
    assert await reserve(store, job, "sched-a", T0 + 2) == 1
    await store.mark_running("j1", 1, T0 + 3)
    assert await store.finish(job, JobStatus.COMPLETED, T0 + 4, attempt=1, worker_id="w1")
    row = await _get(store, "j1")
    order = ["created_at", "queued_at", "reserved_at", "started_at", "finished_at"]
    assert [row[c] for c in order] == [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    assert row["updated_at"] == T0 + 4
    (attempt,) = await store.attempts("j1")
    assert attempt["reserved_at"] <= attempt["started_at"] <= attempt["finished_at"]
    assert [j["job_id"] for j in await store.list_jobs(status="COMPLETED")] == ["j1"]


# ---- group commit ---------------------------------------------------------------------------


async def test_many_concurrent_reserves_are_group_committed(store: JobStore) -> None:
    n = 500
    jobs = [key(f"c{i:03d}", created_at=T0 + i) for i in range(n)]
    before = store._batcher.batches
    results = await asyncio.gather(*(reserve(store, j, "sched-a", T0 + 1000) for j in jobs))
    assert results == [1] * n
    batches = store._batcher.batches - before
    assert 1 <= batches < n
    assert await store.counts() == {"RESERVED": n}
    listed = await store.list_jobs(limit=n + 10)
    assert len({r["job_id"] for r in listed}) == n
    rows = await store.backend.query("SELECT COUNT(*) AS n FROM reservations", consistency="strong")
    assert rows[0]["n"] == n


async def test_failing_operation_does_not_fail_its_batch_mates(store: JobStore) -> None:
    good = [key(f"g{i}") for i in range(5)]
    ops_before = store._batcher.ops
    bad = store._batcher.submit([Stmt("INSERT INTO no_such_table (x) VALUES (?)", (1,))])
    results = await asyncio.gather(bad, *(store.enqueue(j, T0 + 1) for j in good), return_exceptions=True)
    assert isinstance(results[0], StoreError)
    assert results[1:] == [None] * len(good)
    # they were batched together: the failed batch, then each operation alone
    assert store._batcher.ops - ops_before == 2 * (len(good) + 1)
    for j in good:
        assert (await _get(store, j.job_id))["status"] == "QUEUED"


async def test_a_job_handed_back_to_wait_for_capacity_is_free_for_any_scheduler(store: JobStore) -> None:
    j = key("waits")
    assert await reserve(store, j, "A", T0, lease=30.0) == 1  # its worker then refused it: full
    await store.enqueue(j, T0 + 1, release_for="A")  # A hands it back to JetStream
    assert await reserve(store, j, "B", T0 + 2) == 2  # B got the redelivery: no lease to wait out
    await store.enqueue(j, T0 + 3, release_for="A")  # A no longer holds it: B's lease stays
    assert await reserve(store, j, "C", T0 + 4) is None


async def test_a_late_failure_of_a_superseded_attempt_leaves_the_newer_one_alone(store: JobStore) -> None:
    j = key("late")
    assert await reserve(store, j, "A", T0, lease=5.0) == 1
    assert await reserve(store, j, "B", T0 + 10) == 2  # A's lease lapsed: B took over
    await store.fail_attempt("late", 1, "worker_failed", "A's worker failed, late", T0 + 11)
    row = await _get(store, "late")
    assert (row["status"], row["attempts"], row["scheduler_id"], row["error_code"]) == ("RESERVED", 2, "B", None)
    await store.mark_running("late", 2, T0 + 12)
    row = await _get(store, "late")
    assert row["status"] == "RUNNING" and row["started_at"] == T0 + 12


async def test_a_write_waits_for_a_lock_held_elsewhere_without_stalling_the_event_loop(store: JobStore) -> None:
    if not isinstance(store.backend, SqliteBackend):
        pytest.skip("a lock held by another connection on the same file is SQLite's case")
    other = sqlite3.connect(store.backend.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an operator's shell, or another process, holding the write lock
    loop = asyncio.get_running_loop()
    loop.call_later(0.6, other.execute, "COMMIT")
    stalls: list[float] = []

    async def ticker() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            stalls.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    t0 = loop.time()
    try:
        await store.enqueue(key("locked"), T0)
    finally:
        tick.cancel()
        other.close()
    assert loop.time() - t0 >= 0.5  # it did wait for the lock
    assert (await _get(store, "locked"))["status"] == "QUEUED"
    assert max(stalls) < 0.3, max(stalls)  # the loop kept running meanwhile


# ---- fleet state: expiry sweep, reliability, breakers -------------------------------------------


async def test_expired_reservations_are_released_and_fleet_state_round_trips(store: JobStore) -> None:
    from tether.store.fleetstate import FleetState

    state = FleetState(store)
    assert await reserve(store, key("old"), "sched-a", T0) == 1  # expires at T0 + 60
    assert await reserve(store, key("new"), "sched-a", T0 + 100) == 1  # expires at T0 + 160
    assert await state.release_expired(T0 + 120) == 1
    (old,) = await store.reservations("old")
    (new,) = await store.reservations("new")
    assert old["released_at"] == T0 + 120 and new["released_at"] is None
    assert await state.release_expired(T0 + 120) == 0  # released once

    await state.save_reliability([("w1", 4.0, 1.0, T0), ("w2", 0.0, 2.0, T0)])
    await state.save_reliability([("w1", 1.0, 1.0, T0 - 5)])  # an older write never wins
    assert sorted(await state.load_reliability()) == [("w1", 4.0, 1.0, T0), ("w2", 0.0, 2.0, T0)]

    key3 = ("echo", "1", "eu")
    await state.save_breaker(key3, state="OPEN", failures=5, opened_at=T0, scheduler_id="s1", now=T0)
    await state.save_breaker(key3, state="CLOSED", failures=0, opened_at=None, scheduler_id="s2", now=T0 + 9)
    (row,) = await state.breakers()
    assert (row["state"], row["failures"], row["scheduler_id"]) == ("CLOSED", 0, "s2")
