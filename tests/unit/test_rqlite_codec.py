"""RqliteBackend without a server: URL parsing, the JSON body we send, decoding the
JSON rqlite answers (shapes from rqlite's docs and command/encoding/json.go), and the
HTTP behaviour (redirects, host fallback, no leader) against httpx.MockTransport."""

from __future__ import annotations

import json

import httpx
import pytest

from tether.errors import StoreError
from tether.store import backend_from_url
from tether.store.backend import Stmt
from tether.store.rqlite import (
    RqliteBackend,
    decode_query_rows,
    decode_request_results,
    encode_statements,
    parse_url,
)

# ---- URLs -------------------------------------------------------------------------------------


def test_parse_plain_url() -> None:
    t = parse_url("rqlite://db1:4001")
    assert t.hosts == ("http://db1:4001",)
    assert t.auth is None


def test_parse_default_port_tls_auth_and_fallbacks() -> None:
    t = parse_url("rqlites://bob:s%40cret@db1,db2:4003, db3:5001")
    assert t.hosts == ("https://db1:4001", "https://db2:4003", "https://db3:5001")
    assert t.auth == ("bob", "s@cret")


def test_parse_ipv6_host() -> None:
    assert parse_url("rqlite://[::1]:4001").hosts == ("http://[::1]:4001",)


@pytest.mark.parametrize(
    "url", ["postgres://db:5432", "rqlite://", "rqlite://db:notaport", "rqlite://,", "db:4001"]
)
def test_parse_rejects_bad_urls(url: str) -> None:
    with pytest.raises(StoreError):
        parse_url(url)


def test_backend_from_url_builds_rqlite_backend() -> None:
    b = backend_from_url("rqlite://a:4001,b:4002")
    assert isinstance(b, RqliteBackend)
    assert b.hosts == ("http://a:4001", "http://b:4002")


# ---- encoding ---------------------------------------------------------------------------------


def test_encode_statements_parameterised_arrays() -> None:
    body = encode_statements(
        [
            Stmt("INSERT INTO t (a, b, c, d) VALUES (?,?,?,?)", ("x", 1, 2.5, None)),
            Stmt("DELETE FROM t"),
            Stmt("UPDATE t SET f=?", (True,)),
        ]
    )
    assert body == [
        ["INSERT INTO t (a, b, c, d) VALUES (?,?,?,?)", "x", 1, 2.5, None],
        ["DELETE FROM t"],
        ["UPDATE t SET f=?", True],
    ]
    # floats stay floats on the wire (rqlite decodes "1.0" as a REAL parameter)
    assert json.dumps(encode_statements([Stmt("?", (1.0,))])) == '[["?", 1.0]]'


@pytest.mark.parametrize("bad", [b"bytes", float("nan"), float("inf"), object()])
def test_encode_rejects_unsupported_params(bad: object) -> None:
    with pytest.raises(StoreError):
        encode_statements([Stmt("SELECT ?", (bad,))])


# ---- decoding ---------------------------------------------------------------------------------


def test_decode_request_writes_returning_and_zero_rows() -> None:
    body = {
        "results": [
            {"last_insert_id": 1, "rows_affected": 1, "time": 0.0001},
            # RETURNING: rqlite runs the write as a query and answers with rows
            {"columns": ["attempts"], "types": ["integer"], "values": [[3]]},
            # RETURNING that matched nothing: values omitted
            {"columns": ["attempts"], "types": ["integer"]},
            # rows_affected and last_insert_id are omitted when zero
            {},
            {"last_insert_id": 7, "time": 0.0002},
        ],
        "time": 0.01,
    }
    stmts = [
        Stmt("INSERT INTO t (a) VALUES (?)", (1,)),
        Stmt("UPDATE t SET a=a+1 RETURNING a"),
        Stmt("UPDATE t SET a=a+1 WHERE 0 returning a"),
        Stmt("UPDATE t SET a=1 WHERE 0"),
        Stmt("INSERT INTO t (a) VALUES (7)"),
    ]
    res = decode_request_results(body, stmts)
    assert [(r.rowcount, r.rows) for r in res] == [(1, []), (1, [(3,)]), (0, []), (0, []), (0, [])]


def test_decode_request_error_result_raises() -> None:
    body = {"results": [{"rows_affected": 1}, {"error": "no such table: nope"}]}
    with pytest.raises(StoreError, match="no such table: nope"):
        decode_request_results(body, [Stmt("a"), Stmt("b"), Stmt("c")])


def test_decode_request_top_level_error_and_mismatch() -> None:
    with pytest.raises(StoreError, match="leader not found"):
        decode_request_results({"error": "leader not found"}, [Stmt("a")])
    with pytest.raises(StoreError, match="2 results for 3 statements"):
        decode_request_results({"results": [{}, {}]}, [Stmt("a"), Stmt("b"), Stmt("c")])
    with pytest.raises(StoreError):
        decode_request_results(["not", "an", "object"], [Stmt("a")])


def test_decode_request_returning_without_rows_is_refused() -> None:
    # an rqlite that does not know RETURNING runs it as a plain write: no rows come back
    body = {"results": [{"last_insert_id": 1, "rows_affected": 1}]}
    with pytest.raises(StoreError, match="does not support RETURNING"):
        decode_request_results(body, [Stmt("INSERT INTO t (a) VALUES (1) RETURNING a")])
    # a column merely named like the keyword is not a RETURNING clause
    assert decode_request_results(body, [Stmt("INSERT INTO t (returning_x) VALUES (1)")])[0].rowcount == 1


def test_decode_query_rows() -> None:
    body = {
        "results": [
            {
                "columns": ["id", "name", "lease"],
                "types": ["integer", "text", "real"],
                "values": [[1, "fiona", 1.5], [2, None, 100]],
            }
        ]
    }
    assert decode_query_rows(body) == [
        {"id": 1, "name": "fiona", "lease": 1.5},
        {"id": 2, "name": None, "lease": 100},
    ]
    assert decode_query_rows({"results": [{"columns": ["v"], "types": [""]}]}) == []
    with pytest.raises(StoreError, match="syntax error"):
        decode_query_rows({"results": [{"error": 'near "SELEC": syntax error'}]})


# ---- HTTP behaviour against a mock transport --------------------------------------------------


def _ok(n: int = 1) -> httpx.Response:
    return httpx.Response(200, json={"results": [{"rows_affected": 1}] * n})


async def _backend(handler, hosts=("http://a:4001",), **kw) -> RqliteBackend:
    kw.setdefault("check_returning", False)  # these fakes answer every POST the same way
    b = RqliteBackend(hosts, transport=httpx.MockTransport(handler), **kw)
    await b.connect()
    return b


async def test_transaction_posts_to_unified_endpoint() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.path == "/readyz":
            return httpx.Response(200, text="[+]node ok\n[+]leader ok\n[+]store ok")
        return httpx.Response(
            200, json={"results": [{"rows_affected": 1}, {"columns": ["a"], "types": [""], "values": [[2]]}]}
        )

    b = await _backend(handler, auth=("u", "p"))
    try:
        res = await b.transaction([Stmt("UPDATE t SET a=?", (1,)), Stmt("UPDATE t SET a=a+1 RETURNING a")])
    finally:
        await b.close()
    req = seen[-1]
    assert req.method == "POST"
    assert req.url.path == "/db/request"
    assert req.url.query.decode().startswith("transaction&")
    assert req.headers["content-type"] == "application/json"
    assert req.headers["authorization"].startswith("Basic ")
    assert json.loads(req.content) == [["UPDATE t SET a=?", 1], ["UPDATE t SET a=a+1 RETURNING a"]]
    assert [(r.rowcount, r.rows) for r in res] == [(1, []), (1, [(2,)])]


async def test_query_levels() -> None:
    levels: list[str | None] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/db/query":
            levels.append(req.url.params.get("level"))
            return httpx.Response(200, json={"results": [{"columns": ["v"], "types": [""], "values": [[1]]}]})
        return httpx.Response(200)

    b = await _backend(handler)
    try:
        for c in ("none", "weak", "strong"):
            assert await b.query("SELECT 1 AS v", consistency=c) == [{"v": 1}]  # type: ignore[arg-type]
    finally:
        await b.close()
    assert levels == ["none", "weak", "linearizable"]


async def test_redirect_is_followed_as_post_with_same_body() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, str(req.url), req.content))
        if req.url.path == "/readyz":
            return httpx.Response(200)
        if req.url.host == "follower":
            return httpx.Response(301, headers={"Location": f"http://leader:4001{req.url.raw_path.decode()}"})
        return _ok()

    b = await _backend(handler, hosts=("http://follower:4001",))
    try:
        await b.transaction([Stmt("DELETE FROM t WHERE id=?", (5,))])
    finally:
        await b.close()
    (m1, u1, body1), (m2, u2, body2) = seen[-2:]
    assert (m1, m2) == ("POST", "POST")
    assert u1.startswith("http://follower:4001/db/request?transaction")
    assert u2.startswith("http://leader:4001/db/request?transaction")
    assert body1 == body2 == b'[["DELETE FROM t WHERE id=?",5]]'


async def test_redirect_loop_is_bounded() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/readyz":
            return httpx.Response(200)
        return httpx.Response(301, headers={"Location": str(req.url)})

    b = await _backend(handler)
    try:
        with pytest.raises(StoreError, match="redirected more than"):
            await b.transaction([Stmt("DELETE FROM t")])
    finally:
        await b.close()


async def test_connect_error_falls_back_to_next_host() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "dead":
            raise httpx.ConnectError("connection refused", request=req)
        return httpx.Response(200) if req.url.path == "/readyz" else _ok()

    b = await _backend(handler, hosts=("http://dead:4001", "http://alive:4001"))
    try:
        await b.transaction([Stmt("DELETE FROM t")])
        assert b.hosts[b._current] == "http://alive:4001"
    finally:
        await b.close()


async def test_all_hosts_unreachable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    b = RqliteBackend(("http://a:1", "http://b:2"), transport=httpx.MockTransport(handler))
    with pytest.raises(StoreError, match="cannot reach rqlite"):
        await b.connect()
    assert b._client is None


async def test_no_leader_is_a_clear_store_error() -> None:
    ready = True

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/readyz":
            return httpx.Response(200 if ready else 503, text="[+]node ok\n[-]leader not ok")
        return httpx.Response(503, text="leader not found")

    b = await _backend(handler, hosts=("http://a:4001", "http://b:4001"))
    try:
        with pytest.raises(StoreError, match="rqlite cluster has no leader: leader not found"):
            await b.transaction([Stmt("DELETE FROM t")])
        with pytest.raises(StoreError, match="no leader"):
            await b.query("SELECT 1")
    finally:
        await b.close()
    ready = False
    b2 = RqliteBackend(("http://a:4001",), transport=httpx.MockTransport(handler))
    with pytest.raises(StoreError, match="rqlite cluster has no leader"):
        await b2.connect()


async def test_statement_error_raises_store_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/readyz":
            return httpx.Response(200)
        return httpx.Response(200, json={"results": [{"error": "UNIQUE constraint failed: t.id"}]})

    b = await _backend(handler)
    try:
        with pytest.raises(StoreError, match="UNIQUE constraint failed"):
            await b.transaction([Stmt("INSERT INTO t VALUES (1)"), Stmt("INSERT INTO t VALUES (2)")])
    finally:
        await b.close()


async def test_not_connected() -> None:
    b = RqliteBackend(("http://a:4001",))
    with pytest.raises(StoreError, match="not connected"):
        await b.query("SELECT 1")
