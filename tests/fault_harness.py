"""Fault-injection harness: Tether as separate OS processes, faults, and what came out.

One ``FaultCluster`` is a nats-server (file storage, restartable on the same
port and store dir), any number of ``tether worker|scheduler|gateway``
processes sharing one SQLite store file, and a test-side NATS connection.
``batch()`` (tests/fault_load.py) drives load with job ids the test owns and
counts every final result per job id::

    async with fault_cluster(tmp_path) as c:
        w0 = c.start_worker("w0", "echo;delay_ms=100")
        c.start_worker("w1", "echo;delay_ms=100")
        c.start_scheduler("s0")
        await c.wait_ready()
        load = c.batch(jobs=300, concurrency=20)
        await load.reached(100)
        c.kill(w0)
        report = await load.finish()
        report.check()

Helpers for other fault tests (a breaker test, say): ``start_worker(name,
spec)`` with any model spec (``echo;fail=always`` is a broken worker),
``dlq_entries()`` for the DLQ stream, ``store_rows()`` / ``attempts()`` for the
store, ``restart_nats()``, ``kill()`` / ``stop()`` for any role.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from streams import DLQ
from tests.fault_load import Batch, Ledger
from tests.proc_helpers import Procs, tether_env
from tether.connection import connect
from tether.identity import Identity
from tether.natsserver import NatsServer
from tether.security import ensure_dev_trust
from tether.settings import Settings
from tether.trust import allowlist_line, append_allowlist

#: What each role logs once it serves (JSON log lines; ``msg`` field).
READY_MARKS = {"scheduler": '"scheduler started"', "gateway": '"gateway started"', "worker": '"model warm"'}
READY_S = 120.0  # five Python processes starting on two shared cores, beside another test worker


@dataclass(slots=True)
class Role:
    """One ``tether <kind>`` process the cluster started."""

    kind: str  # "worker" | "scheduler" | "gateway"
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    models: str = ""  # workers: the model specs
    worker_id: str = ""  # workers: the id derived from the key TETHER_HOME/keys/<name>.key

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass(slots=True, kw_only=True)
class FaultCluster:
    root: Path
    heartbeat_s: float = 0.5
    dispatch_ack_s: float = 2.0
    job_lease_s: float = 3.0
    max_attempts: int = 3
    env_extra: dict[str, str] = field(default_factory=dict)
    roles: list[Role] = field(default_factory=list)
    nc: Client | None = None
    ledger: Ledger | None = None
    nats: NatsServer = field(init=False)
    procs: Procs = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        ensure_dev_trust(self.settings)  # scheduler and publisher keys, allowlisted (security is on)
        self.nats = NatsServer(store_dir=self.home / "jetstream", log_file=self.root / "nats-server.log")
        self.procs = Procs(self.root)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def settings(self) -> Settings:
        """Where keys and the allowlist live (the roles read the rest from ``env()``)."""
        return Settings(home=self.home)

    @property
    def store_path(self) -> Path:
        return self.root / "tether.db"

    @property
    def js(self) -> JetStreamContext:
        assert self.nc is not None, "cluster not started"
        return self.nc.jetstream(timeout=5.0)

    def env(self) -> dict[str, str]:
        return tether_env(
            self.home,
            url=self.nats.url,
            TETHER_STORE=f"sqlite:///{self.store_path}",
            TETHER_HEARTBEAT_S=str(self.heartbeat_s),
            TETHER_DISPATCH_ACK_S=str(self.dispatch_ack_s),
            TETHER_JOB_LEASE_S=str(self.job_lease_s),
            TETHER_MAX_ATTEMPTS=str(self.max_attempts),
            TETHER_QUEUE_WAIT_S="60",
            **self.env_extra,
        )

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """nats-server, then the test's own connection and the result ledger (before any job)."""
        self.nats.start()
        self.nc = await connect(self.nats.url, name="fault-harness")
        self.ledger = Ledger(self.nc)
        await self.ledger.start()

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.procs.cleanup()
        self.nats.stop()

    # ---- roles --------------------------------------------------------------------------------

    def _start(self, kind: str, name: str, *args: str, models: str = "") -> Role:
        proc = self.procs.start(kind, *args, env=self.env(), name=name)
        role = Role(kind, name, proc, self.procs.logs[proc.pid], models=models)
        self.roles.append(role)
        return role

    def start_worker(
        self, name: str, models: str = "echo", *, grace_s: float = 5.0, region: str | None = None
    ) -> Role:
        """A ``tether worker`` serving ``models`` (comma-separated specs); its id is stable per ``name``."""
        worker_id = self.allow(name, "worker").node_id  # the key exists before the process reads it
        where = ("--region", region) if region else ()
        role = self._start(
            "worker", name, "--models", models, "--name", name, "--grace", str(grace_s), *where, models=models
        )
        role.worker_id = worker_id
        return role

    def allow(self, name: str, role: str) -> Identity:
        """The key ``TETHER_HOME/keys/<name>.key`` (created if new), on the allowlist for ``role``."""
        ident = Identity.load_or_create(self.settings.keys_dir / f"{name}.key", role)
        path = self.settings.allowlist_path
        if not path.exists() or ident.public_key_b64 not in path.read_text():
            append_allowlist(path, allowlist_line(ident.public_key, [role], ident.node_id))
        return ident

    def start_scheduler(self, name: str) -> Role:
        return self._start("scheduler", name)

    def start_gateway(self, name: str) -> Role:
        return self._start("gateway", name)

    def kill(self, role: Role) -> None:
        """``kill -9``: no drain, no goodbye."""
        if role.alive:
            role.proc.send_signal(signal.SIGKILL)
        role.proc.wait(10)

    def stop(self, role: Role, timeout: float = 30.0) -> int:
        """SIGTERM (graceful drain); the exit code."""
        return self.procs.stop(role.proc, timeout)

    def live(self, kind: str | None = None) -> list[Role]:
        return [r for r in self.roles if r.alive and (kind is None or r.kind == kind)]

    async def wait_ready(self, roles: Iterable[Role] | None = None, timeout: float = READY_S) -> None:
        """Until every (live) role logged that it serves; fails with the log of one that exited."""
        waiting = list(roles) if roles is not None else self.live()
        deadline = time.monotonic() + timeout
        while waiting:
            for role in list(waiting):
                if not role.alive:
                    raise AssertionError(
                        f"{role.kind} {role.name} exited {role.proc.returncode}:\n{role.output()[-3000:]}"
                    )
                out = role.output()
                want = len(role.models.split(",")) if role.kind == "worker" else 1
                if out.count(READY_MARKS[role.kind]) >= want:
                    waiting.remove(role)
            if waiting and time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout:.0f}s: {[(r.kind, r.name) for r in waiting]}")
            await asyncio.sleep(0.1)

    async def restart_nats(self, *, kill: bool = True, down_s: float = 0.5) -> None:
        """Stop nats-server (SIGKILL by default), wait ``down_s``, start it again on the same port and store."""
        if kill:
            self.nats.kill()
        else:
            await asyncio.to_thread(self.nats.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.nats.start)

    # ---- load ---------------------------------------------------------------------------------

    def batch(self, **kwargs: Any) -> Batch:
        """Start a batch of jobs now (see ``Batch``); await ``finish()`` for the report."""
        assert self.nc is not None and self.ledger is not None, "cluster not started"
        batch = Batch(self.nc, self.ledger, rows=self.store_rows, **kwargs)
        batch.start()
        return batch

    # ---- what happened ------------------------------------------------------------------------

    async def dlq_entries(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every DLQ entry (optionally for one model id), oldest first, as the decoded JSON body."""
        try:
            info = await self.js.stream_info(DLQ)
        except NotFoundError:
            return []
        out: list[dict[str, Any]] = []
        if not info.state.messages:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                raw = await self.js.get_msg(DLQ, seq, direct=True)
            except NotFoundError:
                continue
            entry = json.loads(raw.data or b"null")
            if isinstance(entry, dict) and (model is None or entry.get("modelId") == model):
                out.append(entry)
        return out

    def store_rows(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The job rows in the shared SQLite store (read-only, beside the running schedulers)."""
        return {r["job_id"]: r for r in self._query("SELECT * FROM jobs WHERE job_id IN ({})", list(job_ids))}

    async def until_running(
        self, workers: Iterable[Role], *, started_within_s: float = 0.15, timeout: float = 30.0
    ) -> tuple[Role, int]:
        """Until one of ``workers`` runs an attempt that started within ``started_within_s``; it, and how many.

        Recent starts only: a finished attempt's row may still say RUNNING for a moment.
        """
        deadline = time.monotonic() + timeout
        while True:
            for worker in workers:
                running = self._count(
                    "SELECT COUNT(*) FROM attempts WHERE worker_id=? AND status='RUNNING' AND started_at > ?",
                    worker.worker_id,
                    time.time() - started_within_s,
                )
                if running:
                    return worker, running
            if time.monotonic() > deadline:
                raise AssertionError(f"no attempt started running on {[w.name for w in workers]}")
            await asyncio.sleep(0.01)

    def attempts(self, job_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self._query("SELECT * FROM attempts WHERE job_id IN ({}) ORDER BY attempt", list(job_ids)):
            out.setdefault(r["job_id"], []).append(r)
        return out

    def _count(self, sql: str, *params: Any) -> int:
        if not self.store_path.exists():
            return 0
        conn = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=30.0)
        try:
            return int(conn.execute(sql, params).fetchone()[0])
        finally:
            conn.close()

    def _query(self, sql: str, ids: list[str]) -> list[dict[str, Any]]:
        if not ids or not self.store_path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=30.0)
        conn.row_factory = sqlite3.Row
        try:
            rows: list[dict[str, Any]] = []
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                cur = conn.execute(sql.format(",".join("?" * len(chunk))), chunk)
                rows.extend(dict(r) for r in cur.fetchall())
            return rows
        finally:
            conn.close()

    def logs(self, kind: str | None = None, tail: int = 2000) -> str:
        return "\n".join(
            f"--- {r.kind} {r.name} (pid {r.proc.pid}, {'alive' if r.alive else r.proc.returncode})\n{r.output()[-tail:]}"
            for r in self.roles
            if kind is None or r.kind == kind
        )


@contextlib.asynccontextmanager
async def fault_cluster(root: Path, **kwargs: Any) -> AsyncIterator[FaultCluster]:
    """A started ``FaultCluster`` under ``root``; every process it started is gone afterwards."""
    cluster = FaultCluster(root=root, **kwargs)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()
