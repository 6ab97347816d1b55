"""SQLite through aiosqlite: the embedded default store backend."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from tether.errors import StoreError
from tether.store.backend import Consistency, Stmt, StmtResult


class SqliteBackend:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._conn: aiosqlite.Connection | None = None

    async def connect(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=30.0)
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA synchronous=NORMAL")
            await self._conn.execute("PRAGMA busy_timeout=30000")
            await self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError("store is not connected")
        return self._conn

    async def transaction(self, statements: Sequence[Stmt]) -> list[StmtResult]:
        # One hop onto aiosqlite's connection thread for the whole transaction:
        # aiosqlite's public API would cost one thread hop per statement.
        try:
            return await self.conn._execute(_run_transaction, self.conn._conn, list(statements))
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite transaction failed: {exc}") from exc

    async def query(
        self, sql: str, params: Sequence[Any] = (), *, consistency: Consistency = "weak"
    ) -> list[dict[str, Any]]:
        try:
            cur = await self.conn.execute(sql, tuple(params))
            cols = [d[0] for d in cur.description or ()]
            rows = await cur.fetchall()
            await cur.close()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite query failed: {exc}") from exc
        return [dict(zip(cols, row, strict=True)) for row in rows]

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


def _run_transaction(conn: sqlite3.Connection, statements: list[Stmt]) -> list[StmtResult]:
    out: list[StmtResult] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for st in statements:
            cur = conn.execute(st.sql, st.params)
            rows = cur.fetchall() if cur.description else []
            out.append(StmtResult(rowcount=cur.rowcount if cur.rowcount >= 0 else len(rows), rows=rows))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return out
