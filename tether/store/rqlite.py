"""rqlite: the replicated store backend, over rqlite's HTTP API.

Writes go to the *unified endpoint* ``POST /db/request?transaction``: every
statement of a batch travels in one request, rqlite applies them as one Raft
log entry inside one SQLite transaction, and a write carrying a ``RETURNING``
clause answers with rows (``columns``/``values``) instead of ``rows_affected``.
Reads go to ``POST /db/query?level=...``.

That transaction is not all or nothing (rqlite ``db/db.go``, ``DB.Request``):

* a statement that fails to *execute* rolls the request back and stops it, so
  its ``error`` is the last result and fewer results come back than statements
  were sent -- the only answer read as "rolled back" (``StatementFailed``);
* a failing ``RETURNING`` statement (run as a query, rqlite issue #2530) and, in
  older servers, a statement that fails to prepare, are recorded as an
  ``error`` result and the request goes on: the other statements commit.

Any other answer holding an ``error`` therefore becomes a plain ``StoreError``
(nothing is replayed), as does an ``error`` on the last statement when every
statement answered, which cannot be told apart from an abort.

``connect()`` checks once, with a temporary table it drops in the same request,
that the server answers ``RETURNING`` with rows (rqlite 8 or later), so an older
server is refused before Tether writes anything.

Wire shapes (rqlite docs, "Accessing rqlite"; rqlite ``command/encoding/json.go``):

* request body: a JSON array, one entry per statement, each ``[sql, p1, p2, ...]``;
* response: ``{"results": [...]}``, one object per statement, holding either
  ``error``, or ``last_insert_id``/``rows_affected`` (both omitted when zero),
  or ``columns``/``types``/``values`` (``values`` omitted when there are no rows).

Followers forward writes to the leader themselves; a 301/302/307/308 (what a
node answers when asked not to forward) is followed by hand, re-POSTing the
same body, because httpx turns a redirected POST into a GET. Connection errors
move on to the next configured host; a node without a leader (503, "leader
not found") becomes ``StoreError("rqlite cluster has no leader: ...")``.

``strong`` reads use rqlite's ``linearizable`` level: rqlite's docs describe its
own ``strong`` level (a read through the Raft log) as of "little use in
production" and no stronger than ``linearizable``; servers that predate
``linearizable`` treat an unknown level as ``weak``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from tether.errors import StoreError
from tether.store.backend import Consistency, StatementFailed, Stmt, StmtResult

DEFAULT_PORT = 4001
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_NO_LEADER_MARKERS = ("leader not found", "no leader", "not leader")
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)

# Our consistency names -> rqlite ``level`` values (see the module docstring).
LEVELS: dict[str, str] = {"none": "none", "weak": "weak", "strong": "linearizable"}

# connect()'s RETURNING check: one transaction that leaves nothing behind. A TEMP table lives
# only on rqlite's write connection (never in the database file or a snapshot), and unqualified
# names resolve to it before any table of the main schema.
RETURNING_PROBE: tuple[Stmt, ...] = (
    Stmt("CREATE TEMP TABLE IF NOT EXISTS tether_probe (x INTEGER)"),
    Stmt("INSERT INTO tether_probe (x) VALUES (1) RETURNING x"),
    Stmt("DROP TABLE IF EXISTS temp.tether_probe"),
)
_NO_RETURNING = "this rqlite server does not support RETURNING (Tether needs rqlite 8 or later)"


# ---- pure encode / decode (no I/O) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RqliteTarget:
    """What an ``rqlite://`` URL names: base URLs to try in order, and credentials."""

    hosts: tuple[str, ...]
    auth: tuple[str, str] | None = None


def parse_url(url: str) -> RqliteTarget:
    """``rqlite://[user:pass@]host[:port][,host2[:port],...]`` (``rqlites://`` for HTTPS)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("rqlite", "rqlites"):
        raise StoreError(f"not an rqlite URL: {url!r} (use rqlite://host:4001 or rqlites://host:4001)")
    http_scheme = "https" if scheme == "rqlites" else "http"
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    auth: tuple[str, str] | None = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        auth = (unquote(user), unquote(password))
    hosts: list[str] = []
    for raw in netloc.split(","):
        raw = raw.strip()
        if not raw:
            continue
        parts = urlsplit(f"//{raw}")
        try:
            port = parts.port
        except ValueError as exc:
            raise StoreError(f"bad port in rqlite URL {url!r}: {raw!r}") from exc
        if not parts.hostname:
            raise StoreError(f"missing host in rqlite URL {url!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        hosts.append(f"{http_scheme}://{host}:{port or DEFAULT_PORT}")
    if not hosts:
        raise StoreError(f"no host in rqlite URL {url!r}")
    return RqliteTarget(hosts=tuple(hosts), auth=auth)


def _param(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreError(f"rqlite cannot carry the non-finite parameter {value!r}")
        return value
    raise StoreError(f"unsupported rqlite parameter type {type(value).__name__}")


def encode_statements(statements: Sequence[Stmt]) -> list[list[Any]]:
    """The JSON body rqlite expects: ``[[sql, p1, p2, ...], ...]``."""
    return [[st.sql, *(_param(p) for p in st.params)] for st in statements]


def _results(body: Any) -> list[Any]:
    if not isinstance(body, dict):
        raise StoreError(f"unexpected rqlite response: {body!r:.200}")
    if body.get("error"):
        raise StoreError(f"rqlite error: {body['error']}")
    results = body.get("results")
    if not isinstance(results, list):
        raise StoreError(f"rqlite response has no results: {body!r:.200}")
    return results


def _error_of(res: Any) -> str | None:
    return str(res["error"]) if isinstance(res, dict) and res.get("error") else None


def decode_request_results(body: Any, statements: Sequence[Stmt]) -> list[StmtResult]:
    """Map a ``/db/request?transaction`` response to one ``StmtResult`` per statement.

    Raises ``StatementFailed`` only for the shape of a rollback: the last result is
    an error and fewer results came back than statements were sent (rqlite stops at
    the statement whose failure rolled the request back). Any other error result
    raises a plain ``StoreError``: rqlite went on past it, so the other statements
    may have committed (see the module docstring). Also raises ``StoreError`` when
    the results do not match the statements, or when a ``RETURNING`` statement came
    back as a plain write (a server that ignores RETURNING; the write has then been
    applied, so this is no rollback either: ``connect()`` refuses such servers first).
    """
    results = _results(body)
    n = len(statements)
    failures = [(i, err) for i, res in enumerate(results) if (err := _error_of(res)) is not None]
    if failures:
        i, err = failures[-1]
        if len(results) < n and i == len(results) - 1:
            raise StatementFailed(
                f"rqlite statement {i + 1} of {n} failed, the transaction rolled back: {err}"
            )
        i, err = failures[0]
        raise StoreError(
            f"rqlite statement {i + 1} of {n} failed without a rollback; the other statements "
            f"may have committed: {err}"
        )
    if len(results) != n:
        raise StoreError(f"rqlite returned {len(results)} results for {n} statements")
    out: list[StmtResult] = []
    for st, res in zip(statements, results, strict=True):
        if not isinstance(res, dict):
            raise StoreError(f"unexpected rqlite result: {res!r:.200}")
        if "columns" in res or "values" in res:
            rows = [tuple(row) for row in res.get("values") or ()]
            out.append(StmtResult(rowcount=len(rows), rows=rows))
        elif _RETURNING.search(st.sql):
            raise StoreError(
                f"rqlite answered a RETURNING statement without rows (it may have committed); {_NO_RETURNING}"
            )
        else:
            out.append(StmtResult(rowcount=int(res.get("rows_affected") or 0)))
    return out


def decode_query_rows(body: Any) -> list[dict[str, Any]]:
    """Map a single-statement ``/db/query`` response to a list of row dicts."""
    results = _results(body)
    if len(results) != 1 or not isinstance(results[0], dict):
        raise StoreError(f"rqlite returned {len(results)} results for one query")
    res = results[0]
    if (err := _error_of(res)) is not None:
        raise StoreError(f"rqlite query failed: {err}")
    cols = list(res.get("columns") or ())
    return [dict(zip(cols, row, strict=True)) for row in res.get("values") or ()]


def _is_no_leader(text: str) -> bool:
    low = text.lower()
    return any(m in low for m in _NO_LEADER_MARKERS)


# ---- the backend ----------------------------------------------------------------------------


class RqliteBackend:
    """``SqlBackend`` over rqlite's HTTP API.

    ``check_returning``: have ``connect()`` run ``RETURNING_PROBE`` (one write request that
    leaves nothing behind) and refuse a server that does not answer RETURNING with rows.
    On by default (``from_url()``, the way Tether opens a store, included); a caller faking
    the HTTP layer may turn it off so that it sees no write it did not ask for.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        check_returning: bool = True,
    ) -> None:
        if not hosts:
            raise StoreError("RqliteBackend needs at least one host")
        self.hosts = tuple(h.rstrip("/") for h in hosts)
        self.auth = auth
        self.timeout = timeout
        self.check_returning = check_returning
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._current = 0  # index of the host that answered last

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 10.0, check_returning: bool = True) -> RqliteBackend:
        target = parse_url(url)
        return cls(target.hosts, auth=target.auth, timeout=timeout, check_returning=check_returning)

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._client = httpx.AsyncClient(
            auth=self.auth,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            transport=self._transport,
        )
        try:
            await self._ready()
            if self.check_returning:
                await self._check_returning()
        except BaseException:
            await self.close()
            raise

    async def _ready(self) -> None:
        resp = await self._send("GET", "/readyz", None)
        if resp.status_code == 503 or (resp.status_code != 200 and _is_no_leader(resp.text)):
            raise StoreError(f"rqlite cluster has no leader: {resp.text.strip()[:200]}")
        if resp.status_code != 200:
            raise StoreError(f"rqlite node not ready: HTTP {resp.status_code}: {resp.text.strip()[:200]}")

    async def _check_returning(self) -> None:
        """Refuse, before any write, a server that would run RETURNING as a plain write."""
        data = await self._request(RETURNING_PROBE)  # transport errors (no leader, ...) pass as they are
        try:
            rows = decode_request_results(data, RETURNING_PROBE)[1].rows
            if rows != [(1,)]:
                raise StoreError(f"the RETURNING statement answered {rows!r} instead of [(1,)]")
        except StoreError as exc:
            detail = str(exc) if _NO_RETURNING in str(exc) else f"{_NO_RETURNING}: {exc}"
            raise StoreError(f"rqlite failed the RETURNING check at connect: {detail}") from exc

    async def transaction(self, statements: Sequence[Stmt]) -> list[StmtResult]:
        """Run ``statements`` in one rqlite transaction (see the module docstring for
        what rqlite rolls back, and ``decode_request_results`` for the errors)."""
        if not statements:
            return []
        return decode_request_results(await self._request(statements), statements)

    async def _request(self, statements: Sequence[Stmt]) -> Any:
        if any(not st.sql.strip() for st in statements):
            # rqlite skips an empty statement without a result: the answer could no longer
            # be matched to the statements, nor a rollback told apart from a partial commit
            raise StoreError("refusing to send an empty SQL statement to rqlite")
        body = encode_statements(statements)
        return await self._post_json(f"/db/request?transaction&timeout={self._server_timeout()}", body)

    async def query(
        self, sql: str, params: Sequence[Any] = (), *, consistency: Consistency = "weak"
    ) -> list[dict[str, Any]]:
        level = LEVELS.get(consistency)
        if level is None:
            raise StoreError(f"unknown consistency level {consistency!r}")
        body = encode_statements([Stmt(sql, tuple(params))])
        data = await self._post_json(f"/db/query?level={level}&timeout={self._server_timeout()}", body)
        return decode_query_rows(data)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # ---- HTTP -----------------------------------------------------------------------------

    def _server_timeout(self) -> str:
        return f"{max(1, int(self.timeout))}s"

    async def _post_json(self, path: str, body: Any) -> Any:
        resp = await self._send("POST", path, json.dumps(body, separators=(",", ":")).encode())
        text = resp.text
        if resp.status_code == 503 or (resp.status_code >= 500 and _is_no_leader(text)):
            raise StoreError(f"rqlite cluster has no leader: {text.strip()[:200]}")
        if resp.status_code in (401, 403):
            raise StoreError(f"rqlite refused the credentials: HTTP {resp.status_code}: {text.strip()[:200]}")
        if resp.status_code != 200:
            raise StoreError(f"rqlite HTTP {resp.status_code}: {text.strip()[:200]}")
        try:
            return resp.json()
        except ValueError as exc:
            raise StoreError(f"rqlite answered with invalid JSON: {text[:200]!r}") from exc

    async def _send(self, method: str, path: str, content: bytes | None) -> httpx.Response:
        """Send to the current host, falling back to the others on connection errors.

        A 503 also moves on to the next host (that node may be cut off from the
        leader); the last answer is returned when every host gave one.
        """
        if self._client is None:
            raise StoreError("store is not connected")
        n = len(self.hosts)
        last: httpx.Response | None = None
        errors: list[str] = []
        for i in range(n):
            idx = (self._current + i) % n
            try:
                resp = await self._follow(method, self.hosts[idx] + path, content)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent: safe to try the next host, even for a write.
                errors.append(f"{self.hosts[idx]}: {exc or type(exc).__name__}")
                continue
            except httpx.HTTPError as exc:
                raise StoreError(f"rqlite request to {self.hosts[idx]} failed: {exc!r}") from exc
            last = resp
            if resp.status_code == 503 and i < n - 1:
                continue
            self._current = idx
            return resp
        if last is not None:
            return last
        raise StoreError(f"cannot reach rqlite at any of {', '.join(self.hosts)}: {'; '.join(errors)}")

    async def _follow(self, method: str, url: str, content: bytes | None) -> httpx.Response:
        assert self._client is not None
        headers = {"Content-Type": "application/json"} if content is not None else None
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self._client.request(method, url, content=content, headers=headers)
            if resp.status_code not in _REDIRECTS:
                return resp
            location = resp.headers.get("location")
            if not location:
                return resp
            await resp.aclose()
            url = urljoin(url, location)
        raise StoreError(f"rqlite redirected more than {MAX_REDIRECTS} times (last: {url})")
