"""How RqliteBackend reads rqlite's answers to a transactional ``/db/request``.

rqlite (``db/db.go``, ``DB.Request``) rolls a ``?transaction`` request back only when a
statement fails to *execute*: it then stops, so the failing result is the last one and
fewer results come back than statements were sent. A failing ``RETURNING`` statement
(run as a query, ``ForceQuery``; rqlite issue #2530) and, in older servers, a statement
that fails to prepare, are recorded as an ``error`` result and the others still commit.
``FakeRqlite`` below applies a request the same way on an in-memory SQLite, behind an
``httpx.MockTransport``, and answers with rqlite's documented JSON shapes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import httpx
import pytest

from tether.errors import StoreError
from tether.store import JobKey, JobStore
from tether.store.backend import StatementFailed, Stmt
from tether.store.rqlite import RqliteBackend, decode_request_results

HOST = "http://fake:4001"


class FakeRqlite:
    """An in-process rqlite node: ``DB.Request`` semantics over an in-memory SQLite.

    ``returning``: ``"yes"`` (rqlite 8: a RETURNING statement answers with rows),
    ``"ignored"`` (an rqlite that runs it as a plain write: the rows are dropped),
    ``"syntax"`` (an SQLite too old to parse RETURNING).
    """

    def __init__(self, *, returning: str = "yes") -> None:
        self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.returning = returning
        self.requests: list[list[list[Any]]] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def backend(self, **kw: Any) -> RqliteBackend:
        kw.setdefault("check_returning", False)  # the tests of the check turn it on
        return RqliteBackend([HOST], transport=self.transport(), **kw)

    def write_requests(self) -> list[list[list[Any]]]:
        return [r for r in self.requests if any(not s[0].lstrip().upper().startswith("SELECT") for s in r)]

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200, text="[+]node ok\n[+]leader ok\n[+]store ok")
        body = json.loads(request.content)
        self.requests.append(body)
        tx = "transaction" in request.url.params
        return httpx.Response(200, json={"results": self._request(body, tx)})

    def _request(self, body: list[list[Any]], tx: bool) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        if tx:
            self.db.execute("BEGIN")
        for sql, *params in body:
            if sql == "":
                continue
            has_returning = "returning" in sql.lower()
            if has_returning and self.returning == "syntax":
                results.append({"error": 'near "RETURNING": syntax error'})
                continue  # a prepare error: recorded, no abort (older rqlite)
            try:
                self.db.execute("EXPLAIN " + sql, params)  # prepare only
            except sqlite3.Error as exc:
                results.append({"error": str(exc)})
                continue  # a prepare error: recorded, no abort (older rqlite)
            force_query = has_returning and self.returning == "yes"
            read_only = sql.lstrip().upper().startswith("SELECT")
            try:
                cur = self.db.execute(sql, params)
                rows = cur.fetchall()
            except sqlite3.Error as exc:
                results.append({"error": str(exc)})
                if force_query:
                    continue  # ForceQuery: error recorded, opErr == nil, no abort
                if tx:
                    self.db.execute("ROLLBACK")
                return results  # abortOnError: rolled back, stop here
            if force_query or read_only:
                cols = [d[0] for d in cur.description or ()]
                res: dict[str, Any] = {"columns": cols, "types": ["" for _ in cols]}
                if rows:
                    res["values"] = [list(r) for r in rows]
            else:
                res = {}
                if cur.lastrowid:
                    res["last_insert_id"] = cur.lastrowid
                if cur.rowcount > 0 or (has_returning and rows):
                    res["rows_affected"] = max(cur.rowcount, len(rows))
            results.append(res)
        if tx:
            self.db.execute("COMMIT")
        return results


def _key(job_id: str) -> JobKey:
    return JobKey(
        job_id=job_id, tenant_id="t", model_id="m", version="1", correlation_id=f"c-{job_id}", created_at=1.0
    )


_RESERVE: dict[str, Any] = dict(
    scheduler_id="s1", worker_id="w1", placement={}, lease_until=100.0, expires_at=100.0, now=10.0
)


# ---- defect 1: only a real abort is replayable -------------------------------------------------


async def _reserve_bad_beside_good(fake: FakeRqlite, table: str) -> tuple[object, object, int]:
    """Reserve jobs 'bad' (its insert into ``table`` fails) and 'good' in one batch:
    (their outcomes, write requests sent)."""
    store = JobStore(fake.backend())
    await store.open()
    try:
        fake.db.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON {table} WHEN NEW.job_id='bad' BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        before = len(fake.write_requests())
        bad, good = await asyncio.gather(
            store.reserve(_key("bad"), **_RESERVE),
            store.reserve(_key("good"), **_RESERVE),
            return_exceptions=True,
        )
    finally:
        await store.close()
    return bad, good, len(fake.write_requests()) - before


async def test_failing_returning_statement_in_a_batch_is_not_replayed() -> None:
    """The other reserves of the batch committed: replaying them would count them twice."""
    fake = FakeRqlite()
    bad, good, sent = await _reserve_bad_beside_good(fake, "jobs")
    assert sent == 1, "the batch must not be replayed op by op"
    for outcome in (bad, good):
        assert isinstance(outcome, StoreError) and not isinstance(outcome, StatementFailed), outcome
        assert "boom" in str(outcome)
    # the good reserve committed exactly once: one attempt, no spurious abandoned attempt
    assert fake.db.execute("SELECT job_id, attempts, status FROM jobs").fetchall() == [
        ("good", 1, "RESERVED")
    ]
    assert fake.db.execute("SELECT job_id, attempt, status FROM attempts").fetchall() == [
        ("good", 1, "RESERVED")
    ]


async def test_a_real_abort_is_still_replayed_op_by_op() -> None:
    """A failing plain write rolls the whole request back: the innocent ops go through on replay."""
    fake = FakeRqlite()
    bad, good, _sent = await _reserve_bad_beside_good(fake, "attempts")
    assert isinstance(bad, StoreError) and "boom" in str(bad)
    assert good == 1
    assert fake.db.execute("SELECT job_id, attempts FROM jobs").fetchall() == [("good", 1)]
    assert fake.db.execute("SELECT job_id, attempt FROM attempts").fetchall() == [("good", 1)]


@pytest.mark.parametrize(
    ("results", "n_sent"),
    [
        ([{"rows_affected": 1}, {"error": "UNIQUE constraint failed: t.id"}], 3),  # stopped at statement 2
        ([{"error": "UNIQUE constraint failed: t.id"}], 2),
        (
            [
                {"error": "no such table: x"},
                {"rows_affected": 1},
                {"error": "UNIQUE constraint failed: t.id"},
            ],
            5,
        ),
    ],
)
def test_abort_shape_is_statement_failed(results: list[dict[str, Any]], n_sent: int) -> None:
    with pytest.raises(StatementFailed, match="UNIQUE constraint failed"):
        decode_request_results({"results": results}, [Stmt(f"s{i}") for i in range(n_sent)])


@pytest.mark.parametrize(
    ("results", "sql"),
    [
        # a RETURNING statement failed; rqlite went on and committed the rest (issue #2530)
        ([{"error": "boom"}, {"rows_affected": 1}], ["UPDATE t SET a=1 RETURNING a", "UPDATE t SET b=2"]),
        # older rqlite: a statement that fails to prepare does not abort either
        (
            [{"rows_affected": 1}, {"error": "no such table: nope"}, {}],
            ["UPDATE t SET a=1", "DELETE FROM nope", "x"],
        ),
        # the last statement failed and every statement answered: an abort cannot be told apart
        ([{"rows_affected": 1}, {"error": "boom"}], ["UPDATE t SET a=1", "UPDATE t SET a=2 RETURNING a"]),
        ([{"rows_affected": 1}, {"error": "boom"}], ["UPDATE t SET a=1", "UPDATE t SET a=2"]),
        ([{"error": "boom"}], ["UPDATE t SET a=1 RETURNING a"]),
    ],
)
def test_error_without_abort_shape_is_a_plain_store_error(
    results: list[dict[str, Any]], sql: list[str]
) -> None:
    with pytest.raises(StoreError) as info:
        decode_request_results({"results": results}, [Stmt(s) for s in sql])
    assert not isinstance(info.value, StatementFailed)
    assert "may have committed" in str(info.value)


async def test_empty_statement_is_refused_before_sending() -> None:
    # rqlite skips an empty statement without a result, which would fake the abort shape
    fake = FakeRqlite()
    b = fake.backend()
    await b.connect()
    try:
        with pytest.raises(StoreError, match="empty SQL"):
            await b.transaction([Stmt("CREATE TABLE t (a)"), Stmt("")])
    finally:
        await b.close()
    assert fake.write_requests() == []


# ---- defect 2: RETURNING support is checked at connect, before any write -------------------------


@pytest.mark.parametrize("returning", ["ignored", "syntax"])
async def test_connect_refuses_a_server_without_returning(returning: str) -> None:
    fake = FakeRqlite(returning=returning)
    backend = fake.backend(check_returning=True)
    with pytest.raises(StoreError, match="does not support RETURNING"):
        await JobStore(backend).open()
    assert backend._client is None
    # no migration, no write of any kind, and the check left nothing behind
    assert len(fake.requests) == 1
    assert fake.db.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert fake.db.execute("SELECT name FROM sqlite_temp_master").fetchall() == []


async def test_connect_returning_check_leaves_nothing_behind() -> None:
    fake = FakeRqlite()
    b = fake.backend(check_returning=True)
    await b.connect()
    try:
        assert len(fake.requests) == 1, "one request, nothing else in it"
        assert all("tether_probe" in st[0] for st in fake.requests[0])
        await b.connect()  # idempotent: checked once
        assert len(fake.requests) == 1
    finally:
        await b.close()
    assert fake.db.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert fake.db.execute("SELECT name FROM sqlite_temp_master").fetchall() == []


def test_from_url_checks_returning() -> None:
    assert RqliteBackend.from_url("rqlite://db:4001").check_returning is True
