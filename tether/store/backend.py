"""The seam between Tether's SQL and the database that runs it.

A backend runs a list of parameterised statements as one atomic transaction
and answers queries. SQLite (``sqlite.py``) and rqlite (``rqlite.py``) both
implement ``SqlBackend``; the SQL itself lives in ``schema.py`` and ``jobs.py``
and is the same for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from tether.errors import StoreError

Consistency = Literal["none", "weak", "strong"]


@dataclass(frozen=True, slots=True)
class Stmt:
    sql: str
    params: tuple[Any, ...] = ()


@dataclass(slots=True)
class StmtResult:
    rowcount: int = 0
    rows: list[tuple[Any, ...]] = field(default_factory=list)


class StatementFailed(StoreError):
    """A statement failed and the backend knows its whole transaction rolled back:
    nothing of it was applied.

    Only this failure lets the group-commit batcher retry a batch's operations one by one.
    Any other ``StoreError`` (a timeout, a lost reply, a leader lost mid-commit, a busy
    database, or a statement failure after which other statements may have committed)
    may hide committed writes: replaying its operations could apply them twice, so they
    fail instead. A failed statement alone is not enough to raise this: rqlite, for one,
    commits the rest of a transaction past a failing ``RETURNING`` statement (see
    ``rqlite.py``), and only the shape of its answer tells a rollback apart.
    """


class SqlBackend(Protocol):
    async def connect(self) -> None: ...

    async def transaction(self, statements: Sequence[Stmt]) -> list[StmtResult]:
        """Run every statement in one transaction; all or nothing when it succeeds.

        Raises ``StatementFailed`` only when a statement failed and the whole transaction is
        known to have rolled back; ``StoreError`` for any other failure, including a failed
        statement after which the others may have committed (rqlite, see ``rqlite.py``).
        """
        ...

    async def query(
        self, sql: str, params: Sequence[Any] = (), *, consistency: Consistency = "weak"
    ) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...
