"""Job state and reservations: the SQL Tether runs, over any ``SqlBackend``.

Lifecycle: ``QUEUED -> RESERVED -> RUNNING -> COMPLETED | FAILED | DEAD_LETTERED``,
with ``RETRYING`` between attempts. Every write is parameterised and goes
through the group-commit batcher. A job row is *leased* by the scheduler that
reserved it (``scheduler_id``, ``lease_until``); another scheduler may take
the job over only once the lease has lapsed, so two schedulers never run the
same attempt. Each attempt row is also that attempt's reservation (worker, expiry,
release); reservations are unique on the retry token (so on ``(correlation_id, retry_token)``), and the
``reservations`` view shows them in their own shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tether import codec
from tether.store.backend import SqlBackend, Stmt, StmtResult
from tether.store.batcher import WriteBatcher
from tether.store.schema import migrate


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RESERVED = "RESERVED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DEAD_LETTERED = "DEAD_LETTERED"


TERMINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DEAD_LETTERED)
_NOT_TERMINAL = "jobs.status NOT IN ('COMPLETED','FAILED','DEAD_LETTERED')"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobKey:
    """What the store needs to create a job row."""

    job_id: str
    tenant_id: str
    model_id: str
    version: str
    correlation_id: str
    idempotency_key: str | None = None
    created_at: float


def retry_token(job_id: str, attempt: int) -> str:
    return f"{job_id}#{attempt}"


_INSERT_COLS = (
    "job_id, tenant_id, model_id, version, status, attempts, correlation_id, idempotency_key, "
    "created_at, queued_at, updated_at"
)


class JobStore:
    def __init__(self, backend: SqlBackend, *, max_batch: int = 512) -> None:
        self.backend = backend
        self._batcher = WriteBatcher(backend, max_ops=max_batch)

    async def open(self) -> None:
        try:
            await self.backend.connect()
            await migrate(self.backend)
        except BaseException:
            await self.backend.close()  # an open backend's thread would keep the process alive
            raise
        self._batcher.start()

    async def close(self) -> None:
        try:
            await self._batcher.close()
        finally:
            await self.backend.close()

    async def __aenter__(self) -> JobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- writes -------------------------------------------------------------------------------

    async def submit(self, statements: list[Stmt]) -> list[StmtResult]:
        """Run ``statements`` in the next group commit (for the store's other tables)."""
        return await self._batcher.submit(statements)

    async def enqueue(self, job: JobKey, now: float, *, release_for: str | None = None) -> None:
        """Record a job as QUEUED (no-op when the row exists).

        ``release_for``: the scheduler handing the job back to JetStream to wait for capacity. Its
        lease ends now, so whichever scheduler JetStream gives the job to next may reserve it at once.
        """
        stmts = [
            Stmt(
                f"INSERT INTO jobs ({_INSERT_COLS}) VALUES (?,?,?,?,'QUEUED',0,?,?,?,?,?) "
                "ON CONFLICT(job_id) DO NOTHING",
                (*_key_values(job), job.created_at, now, now),
            )
        ]
        if release_for is not None:
            stmts.append(
                Stmt("UPDATE jobs SET lease_until=? WHERE job_id=? AND scheduler_id=?", (now, job.job_id, release_for))
            )
        await self._batcher.submit(stmts)

    async def reserve(
        self,
        job: JobKey,
        *,
        scheduler_id: str,
        worker_id: str,
        placement: dict[str, Any],
        lease_until: float,
        expires_at: float,
        now: float,
    ) -> int | None:
        """Reserve the next attempt of ``job`` on ``worker_id``.

        Returns the attempt number, or ``None`` when the job is finished or leased
        by another live scheduler (then nothing was written).
        """
        match = (job.job_id, scheduler_id, now)
        results = await self._batcher.submit(
            [
                Stmt(
                    f"INSERT INTO jobs ({_INSERT_COLS}, scheduler_id, lease_until, worker_id, placement, reserved_at) "
                    "VALUES (?,?,?,?,'RESERVED',1,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(job_id) DO UPDATE SET status='RESERVED', attempts=jobs.attempts+1, "
                    "scheduler_id=excluded.scheduler_id, lease_until=excluded.lease_until, "
                    "worker_id=excluded.worker_id, placement=excluded.placement, "
                    "reserved_at=excluded.reserved_at, started_at=NULL, updated_at=excluded.updated_at "
                    f"WHERE {_NOT_TERMINAL} AND (jobs.lease_until IS NULL OR jobs.lease_until < excluded.reserved_at "
                    "OR jobs.scheduler_id = excluded.scheduler_id) "
                    "RETURNING attempts",
                    (
                        *_key_values(job),
                        job.created_at,
                        now,
                        now,
                        scheduler_id,
                        lease_until,
                        worker_id,
                        codec.compact_json(placement),
                        now,
                    ),
                ),
                Stmt(
                    "INSERT INTO attempts (job_id, attempt, worker_id, scheduler_id, status, reserved_at, "
                    "correlation_id, retry_token, expires_at) "
                    "SELECT job_id, attempts, worker_id, scheduler_id, 'RESERVED', reserved_at, "
                    "correlation_id, job_id || '#' || attempts, ? FROM jobs "
                    "WHERE job_id=? AND scheduler_id=? AND reserved_at=? AND status='RESERVED' "
                    "ON CONFLICT DO NOTHING",
                    (expires_at, *match),
                ),
            ]
        )
        rows = results[0].rows
        if not rows:
            return None
        attempt = int(rows[0][0])
        if attempt > 1:
            # Earlier attempts still open belonged to a scheduler whose lease lapsed (it died):
            # nobody watches them any more, so close them as abandoned.
            await self._batcher.submit(
                [
                    Stmt(
                        "UPDATE attempts SET status='FAILED', error_code='timeout', finished_at=?, "
                        "released_at=COALESCE(released_at, ?), error_message='abandoned: its scheduler "
                        "stopped renewing the lease and the job was taken over' "
                        "WHERE job_id=? AND finished_at IS NULL AND attempt < ?",
                        (now, now, job.job_id, attempt),
                    )
                ]
            )
        return attempt

    async def mark_running(self, job_id: str, attempt: int, now: float) -> None:
        await self._batcher.submit(
            [
                Stmt(
                    "UPDATE jobs SET status='RUNNING', started_at=?, updated_at=? "
                    "WHERE job_id=? AND attempts=? AND status='RESERVED'",
                    (now, now, job_id, attempt),
                ),
                Stmt(
                    "UPDATE attempts SET status='RUNNING', started_at=? "
                    "WHERE job_id=? AND attempt=? AND finished_at IS NULL",
                    (now, job_id, attempt),
                ),
            ]
        )

    async def fail_attempt(self, job_id: str, attempt: int, code: str, message: str, now: float) -> None:
        """Close a failed attempt and mark the job RETRYING (it will be reserved again).

        The job row changes only while ``attempt`` is its latest: a late failure of an attempt
        superseded by a takeover leaves the newer attempt's state alone.
        """
        await self._batcher.submit(
            [
                *_close_attempt(job_id, attempt, "FAILED", code, message, now),
                Stmt(
                    f"UPDATE jobs SET status='RETRYING', error_code=?, error_message=?, updated_at=? "
                    f"WHERE job_id=? AND attempts=? AND {_NOT_TERMINAL}",
                    (code, message, now, job_id, attempt),
                ),
            ]
        )

    async def finish(
        self,
        job: JobKey,
        status: JobStatus,
        now: float,
        *,
        attempt: int | None = None,
        worker_id: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        started_at: float | None = None,
    ) -> bool:
        """Move a job to a final state (creating the row if it never got one). False if already final.

        ``started_at`` (from the worker's report) fills in the start time when the
        RUNNING transition was not written separately (jobs that finish quickly).
        """
        stmts = [
            Stmt(
                f"INSERT INTO jobs ({_INSERT_COLS}, worker_id, error_code, error_message, started_at, finished_at) "
                "VALUES (?,?,?,?,?,0,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(job_id) DO UPDATE SET status=excluded.status, finished_at=excluded.finished_at, "
                "started_at=COALESCE(jobs.started_at, excluded.started_at), "
                "updated_at=excluded.updated_at, error_code=excluded.error_code, "
                "error_message=excluded.error_message, worker_id=COALESCE(excluded.worker_id, jobs.worker_id), "
                f"lease_until=NULL WHERE {_NOT_TERMINAL}",
                (
                    job.job_id,
                    job.tenant_id,
                    job.model_id,
                    job.version,
                    str(status),
                    job.correlation_id,
                    job.idempotency_key,
                    job.created_at,
                    now,
                    now,
                    worker_id,
                    error_code,
                    error_message,
                    started_at,
                    now,
                ),
            )
        ]
        if attempt is not None:
            attempt_status = "COMPLETED" if status == JobStatus.COMPLETED else "FAILED"
            stmts.extend(
                _close_attempt(
                    job.job_id, attempt, attempt_status, error_code, error_message, now, started_at
                )
            )
        results = await self._batcher.submit(stmts)
        return results[0].rowcount > 0

    async def renew_leases(self, job_ids: list[str], scheduler_id: str, until: float) -> None:
        if not job_ids:
            return
        await self._batcher.submit(
            [
                Stmt(
                    "UPDATE jobs SET lease_until=? WHERE job_id=? AND scheduler_id=?",
                    (until, jid, scheduler_id),
                )
                for jid in job_ids
            ]
        )

    # ---- reads --------------------------------------------------------------------------------

    async def get(self, job_id: str) -> dict[str, Any] | None:
        rows = await self.backend.query("SELECT * FROM jobs WHERE job_id=?", (job_id,), consistency="strong")
        if not rows:
            return None
        row = rows[0]
        if row.get("placement"):
            row["placement"] = json.loads(row["placement"])
        return row

    async def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return await self.backend.query(
            "SELECT * FROM attempts WHERE job_id=? ORDER BY attempt", (job_id,), consistency="strong"
        )

    async def reservations(self, job_id: str) -> list[dict[str, Any]]:
        return await self.backend.query(
            "SELECT * FROM reservations WHERE job_id=? ORDER BY created_at", (job_id,), consistency="strong"
        )

    async def list_jobs(
        self, *, limit: int = 50, status: str | None = None, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest jobs, optionally of one status and of one tenant (filtered before the limit)."""
        where = [(c, v) for c, v in (("status", status), ("tenant_id", tenant)) if v]
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(f"{c}=?" for c, _ in where) if where else "")
        return await self.backend.query(sql + " ORDER BY created_at DESC LIMIT ?", (*(v for _, v in where), limit))

    async def counts(self) -> dict[str, int]:
        rows = await self.backend.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}


def _key_values(job: JobKey) -> tuple[Any, ...]:
    return (job.job_id, job.tenant_id, job.model_id, job.version, job.correlation_id, job.idempotency_key)


def _close_attempt(
    job_id: str,
    attempt: int,
    status: str,
    code: str | None,
    message: str | None,
    now: float,
    started_at: float | None = None,
) -> list[Stmt]:
    """Close the attempt and release its reservation (kept if the sweep released it earlier)."""
    return [
        Stmt(
            "UPDATE attempts SET status=?, error_code=?, error_message=?, finished_at=?, "
            "released_at=COALESCE(released_at, ?), started_at=COALESCE(started_at, ?) "
            "WHERE job_id=? AND attempt=? AND finished_at IS NULL",
            (status, code, message, now, now, started_at, job_id, attempt),
        ),
    ]
