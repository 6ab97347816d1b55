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

Consistency = Literal["none", "weak", "strong"]


@dataclass(frozen=True, slots=True)
class Stmt:
    sql: str
    params: tuple[Any, ...] = ()


@dataclass(slots=True)
class StmtResult:
    rowcount: int = 0
    rows: list[tuple[Any, ...]] = field(default_factory=list)


class SqlBackend(Protocol):
    async def connect(self) -> None: ...

    async def transaction(self, statements: Sequence[Stmt]) -> list[StmtResult]:
        """Run every statement in one transaction; all or nothing."""
        ...

    async def query(
        self, sql: str, params: Sequence[Any] = (), *, consistency: Consistency = "weak"
    ) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...
