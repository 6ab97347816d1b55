"""Versioned migrations. Each entry runs once, in order, inside one transaction.

Several processes may open one store at the same moment (schedulers starting
together): when two apply the same migration, one transaction fails (its
``schema_migrations`` row, or its DDL, conflicts with the other's) and rolls
back; the loser re-reads the version and carries on if the winner applied it.
"""

from __future__ import annotations

from tether.errors import StoreError
from tether.store.backend import SqlBackend, Stmt

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "jobs, attempts, reservations",
        (
            """CREATE TABLE IF NOT EXISTS jobs (
                job_id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL,
                model_id TEXT NOT NULL,
                version TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                correlation_id TEXT,
                idempotency_key TEXT,
                scheduler_id TEXT,
                lease_until REAL,
                worker_id TEXT,
                placement TEXT,
                error_code TEXT,
                error_message TEXT,
                created_at REAL NOT NULL,
                queued_at REAL,
                reserved_at REAL,
                started_at REAL,
                finished_at REAL,
                updated_at REAL NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, updated_at)",
            "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs(created_at)",
            """CREATE TABLE IF NOT EXISTS attempts (
                job_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                worker_id TEXT,
                scheduler_id TEXT,
                status TEXT NOT NULL,
                error_code TEXT,
                error_message TEXT,
                reserved_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                PRIMARY KEY (job_id, attempt)
            )""",
            """CREATE TABLE IF NOT EXISTS reservations (
                correlation_id TEXT NOT NULL,
                retry_token TEXT NOT NULL,
                job_id TEXT NOT NULL,
                worker_id TEXT NOT NULL,
                created_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                released_at REAL,
                PRIMARY KEY (correlation_id, retry_token)
            )""",
            "CREATE INDEX IF NOT EXISTS reservations_open ON reservations(worker_id, released_at)",
        ),
    ),
    (
        2,
        "index reservations by retry token (attempt close looks them up by token)",
        ("CREATE INDEX IF NOT EXISTS reservations_by_token ON reservations(retry_token)",),
    ),
    (
        3,
        "worker reliability and circuit breakers, kept across scheduler restarts",
        (
            """CREATE TABLE IF NOT EXISTS worker_reliability (
                worker_id TEXT PRIMARY KEY,
                successes REAL NOT NULL,
                failures REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS breakers (
                model_id TEXT NOT NULL,
                version TEXT NOT NULL,
                region TEXT NOT NULL,
                state TEXT NOT NULL,
                failures INTEGER NOT NULL,
                opened_at REAL,
                scheduler_id TEXT,
                updated_at REAL NOT NULL,
                PRIMARY KEY (model_id, version, region)
            )""",
            "CREATE INDEX IF NOT EXISTS reservations_expiring ON reservations(expires_at) WHERE released_at IS NULL",
        ),
    ),
    (
        4,
        "reservations folded into attempts: one row per attempt, written once at reserve time",
        (
            "ALTER TABLE attempts ADD COLUMN correlation_id TEXT",
            "ALTER TABLE attempts ADD COLUMN retry_token TEXT",
            "ALTER TABLE attempts ADD COLUMN expires_at REAL",
            "ALTER TABLE attempts ADD COLUMN released_at REAL",
            """UPDATE attempts SET
                retry_token = job_id || '#' || attempt,
                correlation_id = (SELECT r.correlation_id FROM reservations r
                    WHERE r.retry_token = attempts.job_id || '#' || attempts.attempt),
                expires_at = (SELECT r.expires_at FROM reservations r
                    WHERE r.retry_token = attempts.job_id || '#' || attempts.attempt),
                released_at = (SELECT r.released_at FROM reservations r
                    WHERE r.retry_token = attempts.job_id || '#' || attempts.attempt)""",
            "DROP TABLE reservations",
            """CREATE VIEW reservations AS
                SELECT correlation_id, retry_token, job_id, worker_id, reserved_at AS created_at, expires_at, released_at
                FROM attempts WHERE retry_token IS NOT NULL""",
            "CREATE UNIQUE INDEX IF NOT EXISTS attempts_reservation ON attempts(correlation_id, retry_token)",
            "CREATE INDEX IF NOT EXISTS attempts_expiring ON attempts(expires_at) WHERE released_at IS NULL",
        ),
    ),
    (
        5,
        "reservations unique on the retry token alone, an index that grows at its end",
        (
            # A retry token names one attempt of one job, so unique tokens make the pairs
            # (correlation_id, retry_token) unique too. Tokens start with the job id, time-ordered
            # when the gateway made it: such reservations land on the index's last page, where the
            # old index, led by a client's random correlation id, wrote a page of its own per
            # reservation into every commit.
            "DROP INDEX IF EXISTS attempts_reservation",
            "CREATE UNIQUE INDEX IF NOT EXISTS attempts_by_token ON attempts(retry_token)",
        ),
    ),
)

LATEST = MIGRATIONS[-1][0]


async def migrate(backend: SqlBackend) -> int:
    """Apply pending migrations; returns the schema version now in force."""
    await backend.transaction(
        [
            Stmt(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)"
            )
        ]
    )
    current = await _version(backend)
    for version, name, statements in MIGRATIONS:
        if version <= current:
            continue
        try:
            await backend.transaction(
                [Stmt(sql) for sql in statements]
                + [
                    Stmt(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, strftime('%s','now'))",
                        (version, name),
                    )
                ]
            )
        except StoreError:
            if await _version(backend) < version:
                raise
            # another process applied it just now
        current = version
    return current


async def _version(backend: SqlBackend) -> int:
    rows = await backend.query("SELECT MAX(version) AS v FROM schema_migrations", consistency="strong")
    return int(rows[0]["v"] or 0) if rows else 0
