"""What schedulers remember about the fleet across restarts: worker reliability, breakers,
and the sweep that releases reservations whose attempt outlived its expiry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tether.store.backend import Stmt
from tether.store.jobs import JobStore


class FleetState:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def save_reliability(self, rows: Iterable[tuple[str, float, float, float]]) -> None:
        stmts = [
            Stmt(
                "INSERT INTO worker_reliability (worker_id, successes, failures, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT(worker_id) DO UPDATE SET successes=excluded.successes, "
                "failures=excluded.failures, updated_at=excluded.updated_at "
                "WHERE excluded.updated_at >= worker_reliability.updated_at",
                (w, s, f, at),
            )
            for w, s, f, at in rows
        ]
        if stmts:
            await self.store.submit(stmts)

    async def load_reliability(self) -> list[tuple[str, float, float, float]]:
        rows = await self.store.backend.query(
            "SELECT worker_id, successes, failures, updated_at FROM worker_reliability", consistency="strong"
        )
        return [(r["worker_id"], r["successes"], r["failures"], r["updated_at"]) for r in rows]

    async def save_breaker(
        self,
        key: tuple[str, str, str],
        *,
        state: str,
        failures: int,
        opened_at: float | None,
        scheduler_id: str,
        now: float,
    ) -> None:
        await self.store.submit(
            [
                Stmt(
                    "INSERT INTO breakers (model_id, version, region, state, failures, opened_at, scheduler_id, "
                    "updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(model_id, version, region) DO UPDATE SET "
                    "state=excluded.state, failures=excluded.failures, opened_at=excluded.opened_at, "
                    "scheduler_id=excluded.scheduler_id, updated_at=excluded.updated_at",
                    (*key, state, failures, opened_at, scheduler_id, now),
                )
            ]
        )

    async def breakers(self) -> list[dict[str, Any]]:
        return await self.store.backend.query(
            "SELECT * FROM breakers ORDER BY model_id, version, region", consistency="strong"
        )

    async def release_expired(self, now: float) -> int:
        """Release reservations past their expiry (their attempt was abandoned); returns how many."""
        (res,) = await self.store.submit(
            [
                Stmt(
                    "UPDATE attempts SET released_at=? WHERE released_at IS NULL AND expires_at < ?",
                    (now, now),
                )
            ]
        )
        return res.rowcount
