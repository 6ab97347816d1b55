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
    """A statement failed and its transaction was rolled back: nothing of it was applied.

    Only this failure lets the group-commit batcher retry a batch's operations one by one.
    Any other ``StoreError`` (a timeout, a lost reply, a leader lost mid-commit, a busy
    database) may hide a committed transaction: replaying its operations could apply
    them twice, so they fail instead.
    """


class SqlBackend(Protocol):
    async def connect(self) -> None: ...

    async def transaction(self, statements: Sequence[Stmt]) -> list[StmtResult]:
        """Run every statement in one transaction; all or nothing.

        Raises ``StatementFailed`` when a statement failed (rolled back), ``StoreError`` otherwise.
        """
        ...

    async def query(
        self, sql: str, params: Sequence[Any] = (), *, consistency: Consistency = "weak"
    ) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...
