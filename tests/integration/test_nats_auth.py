"""nats-server with infra/nats/prod.conf on loopback: TLS required, per-role users, subject permissions."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client

from tether import certs, subjects
from tether.connection import connect, tls_context
from tether.identity import Identity
from tether.natsauth import NatsUser, write_auth
from tether.natsserver import INFRA_DIR, NatsServer

WORKER_A, WORKER_B = Identity.generate("worker").node_id, Identity.generate("worker").node_id


@dataclass
class Prod:
    server: NatsServer
    ca: str
    users: dict[str, NatsUser]
    errors: list[str]

    async def as_user(self, name: str | None, **kw: object) -> Client:
        host = f"127.0.0.1:{self.server.port}"
        u = self.users.get(name or "")
        url = f"tls://{u.name}:{u.password}@{host}" if u else f"tls://{host}"

        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        opts: dict[str, object] = {
            "tls": tls_context(self.ca),
            "max_reconnect_attempts": 0,
            "error_cb": on_error,
        }
        opts.update(kw)
        return await connect(url, name=f"test-{name}", allow_reconnect=False, **opts)

    async def violation(self, text: str) -> None:
        for _ in range(500):  # generous: the -ERR can take a while on a loaded 2-core machine
            if any("permissions violation" in e.lower() and text in e for e in self.errors):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {text!r}: {self.errors}")


@pytest.fixture
def prod_server(tmp_path: Path) -> Iterator[Prod]:
    conf_dir = tmp_path / "nats"
    conf_dir.mkdir()
    shutil.copy(INFRA_DIR / "prod.conf", conf_dir / "prod.conf")
    certs.generate(conf_dir, ["localhost", "127.0.0.1"])
    users = [NatsUser.new("admin"), NatsUser.new("client"), NatsUser.new("worker", WORKER_A)]
    users.append(NatsUser.new("worker", WORKER_B))
    write_auth(conf_dir, users)
    server = NatsServer(
        store_dir=tmp_path / "js", config=conf_dir / "prod.conf", log_file=tmp_path / "nats-server.log"
    )
    server.start()
    try:
        yield Prod(server, str(conf_dir / "ca.pem"), {u.name: u for u in users}, [])
    finally:
        server.stop()


@pytest_asyncio.fixture
async def admin(prod_server: Prod) -> AsyncIterator[Client]:
    nc = await prod_server.as_user("admin")
    yield nc
    await nc.close()


def test_tls_is_required(prod_server: Prod) -> None:
    with socket.create_connection(("127.0.0.1", prod_server.server.port), timeout=5) as s:
        info = s.recv(4096).decode()
        assert info.startswith("INFO ")
        assert json.loads(info[5:])["tls_required"] is True
        s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')  # plain text after the INFO
        reply = b""
        try:
            while chunk := s.recv(4096):
                reply += chunk
        except OSError:
            pass
        assert b"PONG" not in reply  # the server never talks plain text to us


async def test_client_without_credentials_is_refused(prod_server: Prod) -> None:
    with pytest.raises(Exception) as ei:
        nc = await prod_server.as_user(None)
        await nc.close()
    assert "authorization" in str(ei.value).lower() or prod_server.errors
    # right credentials, but a client that does not trust the server's CA gets no connection either
    admin = prod_server.users["admin"]
    with pytest.raises(ssl.SSLError):
        await connect(
            f"tls://{admin.name}:{admin.password}@127.0.0.1:{prod_server.server.port}",
            name="untrusted-ca",
            max_reconnect_attempts=0,
            allow_reconnect=False,
            tls=ssl.create_default_context(),
        )


async def test_worker_cannot_publish_jobs_or_read_another_workers_dispatch(
    prod_server: Prod, admin: Client
) -> None:
    seen: list[str] = []

    async def record(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append(msg.subject)

    await admin.subscribe("tether.>", cb=record)
    await admin.flush()
    worker = await prod_server.as_user(f"worker-{WORKER_A}")
    got_own: list[bytes] = []
    got_other: list[bytes] = []

    async def own(msg) -> None:  # type: ignore[no-untyped-def]
        got_own.append(msg.data)

    async def other(msg) -> None:  # type: ignore[no-untyped-def]
        got_other.append(msg.data)

    try:
        await worker.publish(subjects.job_subject("demo", "echo", "1"), b'{"input":"forged job"}')
        await prod_server.violation("tether.jobs.demo.echo.1")
        await worker.subscribe(subjects.dispatch_subject(WORKER_B), cb=other)
        await prod_server.violation(subjects.dispatch_subject(WORKER_B))
        await worker.publish(subjects.presence_subject("local", WORKER_B), b"x")
        await prod_server.violation(subjects.presence_subject("local", WORKER_B))
        reports = subjects.report_subject("s-1")  # a worker reports only in its own name
        await worker.publish(subjects.worker_report_subject(reports, WORKER_B), b"x")
        await prod_server.violation(subjects.worker_report_subject(reports, WORKER_B))

        await worker.subscribe(subjects.dispatch_subject(WORKER_A), cb=own)
        await worker.publish(subjects.presence_subject("local", WORKER_A), b"beat")
        await worker.publish(subjects.worker_report_subject(reports, WORKER_A), b"report")
        await worker.flush()
        # core NATS is at-most-once: on a loaded machine a message can be missed, so send again
        # until the worker has its own; whatever arrives, nothing meant for B may reach it
        for _ in range(50):
            await admin.publish(subjects.dispatch_subject(WORKER_A), b"for A")
            await admin.publish(subjects.dispatch_subject(WORKER_B), b"for B")
            await admin.flush()
            await asyncio.sleep(0.1)
            if got_own and {subjects.presence_subject("local", WORKER_A),
                            subjects.worker_report_subject(reports, WORKER_A)} <= set(seen):  # fmt: skip
                break
        assert got_own and set(got_own) == {b"for A"} and got_other == []
        assert subjects.presence_subject("local", WORKER_A) in seen
        assert subjects.worker_report_subject(reports, WORKER_A) in seen
        assert subjects.worker_report_subject(reports, WORKER_B) not in seen
        assert not [s for s in seen if s.startswith("tether.jobs.")]
        assert subjects.presence_subject("local", WORKER_B) not in seen
    finally:
        await worker.close()


async def test_client_may_only_request_infer(prod_server: Prod, admin: Client) -> None:
    async def responder(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(b"ok:" + msg.data)

    await admin.subscribe(subjects.INFER, cb=responder)
    await admin.flush()
    client = await prod_server.as_user("client")
    try:
        reply = await client.request(subjects.INFER, b"hello", timeout=5)
        assert reply.data == b"ok:hello"
        await client.publish(subjects.job_subject("demo", "echo", "1"), b"{}")
        await prod_server.violation("tether.jobs.demo.echo.1")
        await client.subscribe(subjects.PRESENCE_ALL)
        await prod_server.violation("tether.presence")
    finally:
        await client.close()


def test_certs_cli_writes_tls_and_users(tmp_path: Path) -> None:
    from tests.proc_helpers import run_tether, tether_env

    env = tether_env(tmp_path / "home")
    out = tmp_path / "nats"
    assert run_tether("certs", "gen", "--out", str(out), "--host", "nats.test", env=env).returncode == 0
    r = run_tether("certs", "users", "--out", str(out), "--worker", WORKER_A, env=env)
    assert r.returncode == 0, r.stderr
    assert {"ca.pem", "server.pem", "server-key.pem", "tls.conf", "auth.conf", "credentials.json"} <= {
        p.name for p in out.iterdir()
    }
    for secret in ("server-key.pem", "ca-key.pem", "auth.conf", "credentials.json"):
        assert (out / secret).stat().st_mode & 0o077 == 0, secret
    creds = json.loads((out / "credentials.json").read_text())
    assert set(creds) == {"admin", "scheduler", "gateway", "publisher", "client", f"worker-{WORKER_A}"}
    assert subjects.dispatch_subject(WORKER_A) in (out / "auth.conf").read_text()


async def test_every_role_runs_a_job_under_its_own_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole pipeline on prod.conf: scheduler, worker and gateway each on their role's user, a client on
    the client user; a job gets its result and the server reports no permissions violation."""
    from services.gateway.service import Gateway
    from services.scheduler.service import Scheduler
    from services.worker.runtimes.catalog import parse_model_spec
    from services.worker.service import Worker
    from streams import ARTIFACTS_BUCKET, apply, artifacts_only, topology
    from tether import client
    from tether.artifacts import build_manifest, publish
    from tether.settings import Settings

    worker_identity = Identity.generate("worker")
    conf_dir = tmp_path / "nats"
    conf_dir.mkdir()
    shutil.copy(INFRA_DIR / "prod.conf", conf_dir / "prod.conf")
    certs.generate(conf_dir, ["localhost", "127.0.0.1"])
    users = {u.role: u for u in (NatsUser.new(r) for r in ("scheduler", "gateway", "client", "publisher"))}
    users["worker"] = NatsUser.new("worker", worker_identity.node_id)
    write_auth(conf_dir, list(users.values()))
    log_file = tmp_path / "nats-server.log"
    server = NatsServer(store_dir=tmp_path / "js", config=conf_dir / "prod.conf", log_file=log_file)
    server.start()
    monkeypatch.setenv("TETHER_NATS_CA", str(conf_dir / "ca.pem"))
    base = Settings(
        admission_bench=False,  # as the conftest settings: no start-up probe on the shared cores
        home=tmp_path, heartbeat_s=0.5, store=f"sqlite:///{tmp_path / 'tether.db'}", insecure=True,
        request_timeout_s=30.0, queue_wait_s=10.0,
    )

    def as_role(role: str) -> Settings:
        return replace(base, nats_url=users[role].url(port=server.port))

    scheduler = Scheduler(as_role("scheduler"), scheduler_id="s-prod")
    worker = Worker(as_role("worker"), identity=worker_identity, specs=[parse_model_spec("echo")])
    gateway = Gateway(as_role("gateway"), gateway_id="g-prod")
    nc = None
    try:
        await scheduler.start()  # first: it creates the streams and the consumer
        await worker.start()
        await worker.wait_ready()
        await gateway.start()
        nc = await connect(users["client"].url(port=server.port), name="prod-client")
        reply = await client.infer(nc, model="echo", input="under prod.conf", timeout=30)
        assert reply["result"] == "under prod.conf" and reply["workerId"] == worker_identity.node_id
        # a model publisher, as `tether models publish` does it: declare the store, upload, sign
        pub_nc = await connect(users["publisher"].url(port=server.port), name="prod-publisher")
        try:
            pub_js = pub_nc.jetstream()
            await apply(pub_js, artifacts_only(topology(as_role("publisher"), pub_nc._server_info)))
            model_dir = tmp_path / "model"
            model_dir.mkdir()
            (model_dir / "weights.bin").write_bytes(b"\x00" * 1024)
            manifest = build_manifest(model_dir, model_id="m", version="1", runtime="echo", task="echo")
            digest = await publish(pub_js, ARTIFACTS_BUCKET, model_dir, manifest, Identity.generate("publisher"))
            assert len(digest) == 64
        finally:
            await pub_nc.close()
    finally:
        if nc is not None:
            await nc.close()
        await gateway.close()
        await worker.close()
        await scheduler.close()
        server.stop()
    # nats-server logs "Publish Violation" / "Subscription Violation" (and tells the client "Permissions
    # Violation for ..."): any of them means a role's user lacks a subject its code uses
    violations = [line for line in log_file.read_text().splitlines() if "Violation" in line]
    assert violations == [], violations
