"""Job state and reservations in SQL: SQLite by default, rqlite across machines."""

from __future__ import annotations

from tether.errors import InvalidRequest
from tether.store.backend import SqlBackend, Stmt, StmtResult
from tether.store.jobs import TERMINAL, JobKey, JobStatus, JobStore, retry_token
from tether.store.sqlite import SqliteBackend


def backend_from_url(url: str) -> SqlBackend:
    """``sqlite:///path/to.db`` (or a bare path) or ``rqlite://host:4001``."""
    if url.startswith("rqlite://") or url.startswith("rqlites://"):
        from tether.store.rqlite import RqliteBackend

        return RqliteBackend.from_url(url)
    if url.startswith("sqlite:///"):
        return SqliteBackend(url.removeprefix("sqlite:///"))
    if "://" in url:
        raise InvalidRequest(f"unsupported store URL {url!r}: use sqlite:///path or rqlite://host:port")
    return SqliteBackend(url)


def open_store(url: str) -> JobStore:
    return JobStore(backend_from_url(url))


__all__ = [
    "TERMINAL",
    "JobKey",
    "JobStatus",
    "JobStore",
    "SqlBackend",
    "SqliteBackend",
    "Stmt",
    "StmtResult",
    "backend_from_url",
    "open_store",
    "retry_token",
]
