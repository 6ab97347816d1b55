"""The ``tether`` command line.

    tether up                       everything on this machine (what `make run` calls)
    tether nats|gateway|scheduler|worker   one role, pointed at TETHER_NATS_URL
    tether infer TEXT --model M     one request through tether.infer (--stream: tokens as they come; tether/infer_cli.py)
    tether status [--watch]         workers, models, queue depths, SLIs (live with --watch)
    tether jobs list | show ID | replay --since 10m    the store's view, or RESULTS replayed
    tether dlq list                 dead letters replayed from the DLQ stream
    tether apikeys add|list|revoke  API keys for the HTTP gateway (tenant per key)
    tether bench                    requests through tether.infer, latency and throughput
    tether keys gen|show|allow|deny|list   node keys and the trust lists (tether/keys_cli.py)
    tether models publish|verify    signed model artifacts (tether/artifacts/cli.py)
    tether certs gen|users          TLS and per-role users for infra/nats/prod.conf (tether/certs.py)
    tether dlq list | show ID | retry ID   dead letters
    tether drain WORKER|all         finish in-flight jobs, then stop

Exit codes: 0 ok, 1 failed, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from tether.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "models", None):
        overrides["models"] = [m for m in args.models.split(",") if m]
        os.environ["TETHER_MODELS"] = args.models  # the worker `tether up` starts reads it
    if getattr(args, "region", None):
        overrides["region"] = args.region
    if getattr(args, "insecure", False):
        os.environ["TETHER_INSECURE"] = "1"  # children started by `tether up` inherit it
        overrides["insecure"] = True
    s = Settings.from_env(**overrides)
    if args.cmd in ("up", "gateway", "scheduler", "worker"):
        from tether.security import warn_insecure

        warn_insecure(s)
    return s


def cmd_up(args: argparse.Namespace) -> int:
    from tether.up import up

    return asyncio.run(up(_settings(args), demo=not args.no_demo))


def cmd_nats(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tether.natsserver import NatsServer

    s = _settings(args)
    log_file = s.home / "logs" / "nats-server.log"
    server = NatsServer(
        store_dir=s.home / "jetstream",
        port=args.port or s.nats_port,
        host=args.host,
        log_file=log_file,
        die_with_parent=True,
        server_name=args.name,
        cluster_port=args.cluster_port or 0,
        routes=[r.strip() for r in (args.routes or "").split(",") if r.strip()],
        gomaxprocs=s.nats_gomaxprocs or 0,  # a server of its own: Go's default unless configured
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: stop.set())
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        print(f"error: nats-server did not start: {exc}", file=sys.stderr)
        return 1
    with server:
        print(
            f"nats-server listening on {server.url} (JetStream store {s.home / 'jetstream'}, log {log_file})",
            flush=True,
        )
        if server.cluster_port:
            print(f"cluster {server.cluster_name}: routes on {server.cluster_url} to {server.routes}", flush=True)
        while not stop.wait(0.5):
            if server.proc is not None and server.proc.poll() is not None:
                print(
                    f"error: nats-server exited with code {server.proc.returncode}; see {log_file}",
                    file=sys.stderr,
                )
                return 1
    return 0


def _role(coro_factory: Any) -> int:
    from tether.tasks import run_main
    from tether.telemetry import setup_logging

    setup_logging()
    run_main(coro_factory())
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from tether.roles import run_gateway

    s = _settings(args)
    if args.port is not None:
        s.http_port = args.port
    return _role(lambda: run_gateway(s, http=args.http))


def cmd_scheduler(args: argparse.Namespace) -> int:
    from tether.roles import run_scheduler

    return _role(lambda: run_scheduler(_settings(args)))


def cmd_worker(args: argparse.Namespace) -> int:
    from tether.errors import TetherError
    from tether.roles import run_worker, worker_specs
    from tether.security import node_identity

    s = _settings(args)
    try:
        specs = worker_specs(s, dtype=args.dtype, quantize=args.quantize)
    except TetherError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    identity = node_identity(s, "worker", args.name)
    return _role(lambda: run_worker(s, identity=identity, grace_s=args.grace, specs=specs))


def cmd_infer(args: argparse.Namespace) -> int:
    from tether.infer_cli import run_infer

    return run_infer(_settings(args), args)


def cmd_status(args: argparse.Namespace) -> int:
    from tether.status import show_status

    return asyncio.run(show_status(_settings(args), watch=args.watch, as_json=args.json))


def cmd_jobs(args: argparse.Namespace) -> int:
    from tether.status import jobs_list, jobs_show

    s = _settings(args)
    if args.jobs_cmd == "replay":
        from tether.ops import cmd_replay

        return asyncio.run(cmd_replay(s, since=args.since, as_json=args.json))
    if args.jobs_cmd == "show":
        return asyncio.run(jobs_show(s, args.job_id))
    return asyncio.run(jobs_list(s, status=args.status, limit=args.limit))


async def _connected(s: Any, fn: Any) -> int:
    """Run ``fn(nc, js)`` on a fresh connection; exit 1 with a message when NATS is unreachable."""
    from nats.errors import Error as NatsError

    from tether.connection import connect

    try:
        nc = await connect(s.url, name="tether-cli", max_reconnect_attempts=1)
    except (OSError, NatsError) as exc:
        print(f"error [unavailable]: cannot reach NATS at {s.url}: {exc}", file=sys.stderr)
        return 1
    try:
        return int(await fn(nc, nc.jetstream()))
    finally:
        await nc.close()


def cmd_dlq(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tether import dlq
    from tether.errors import TetherError
    from tether.status import add_id_column

    async def go(nc: Any, js: Any) -> int:
        if args.dlq_cmd == "list":
            rows = [dlq.summary(e) for e in await dlq.entries(js)]
            if args.json:
                print(json.dumps(rows))
                return 0
            table = Table(title=f"dead letters ({len(rows)})")
            add_id_column(table, "jobId", (str(r["jobId"]) for r in rows))
            for col in ("model", "tenant", "attempts", "error"):
                table.add_column(col)
            for r in rows:
                table.add_row(*(escape(str(r[c])) for c in ("jobId", "model", "tenant", "attempts", "error")))
            Console().print(table)
            return 0
        if args.dlq_cmd == "show":
            entry = await dlq.find(js, args.job_id)
            if entry is None:
                print(f"error [not_found]: job {args.job_id!r} is not in the DLQ", file=sys.stderr)
                return 1
            print(dlq.render_entry(entry))
            return 0
        try:
            new_id = await dlq.retry(nc, js, args.job_id)
        except TetherError as exc:
            print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
            return 1
        print(json.dumps({"retriedAs": new_id}) if args.json else f"resubmitted {args.job_id} as {new_id}")
        return 0

    return asyncio.run(_connected(_settings(args), go))


def cmd_apikeys(args: argparse.Namespace) -> int:
    from tether.ops import cmd_keys as run

    name = getattr(args, "name", "")
    return asyncio.run(
        run(_settings(args), args.keys_cmd, tenant=getattr(args, "tenant", None), name=name or "",
            digest=getattr(args, "digest", None))
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from tether.ops import cmd_bench as run

    return asyncio.run(run(_settings(args), model=args.model, n=args.n, concurrency=args.concurrency, text=args.text))


def build_parser() -> argparse.ArgumentParser:
    from tether.artifacts.cli import add_parser as add_models
    from tether.canary_cli import add_parser as add_canary
    from tether.certs import add_parser as add_certs
    from tether.control_cli import add_parser as add_control
    from tether.control_cli import seconds
    from tether.keys_cli import add_parser as add_keys

    p = argparse.ArgumentParser(prog="tether", description="Many machines, one inference service, over NATS.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    insecure = argparse.ArgumentParser(add_help=False)
    insecure.add_argument(
        "--insecure", action="store_true", help="trust any signing key (development only; prints a warning)"
    )

    up = sub.add_parser(
        "up", parents=[insecure], help="run nats-server, scheduler, worker and gateway here (development)"
    )
    up.add_argument("--no-demo", action="store_true", help="skip the demo question once ready")
    up.add_argument("--models", help="comma-separated model specs (default: echo, smollm2, minilm)")
    up.set_defaults(fn=cmd_up)

    n = sub.add_parser("nats", help="run nats-server with JetStream (data under TETHER_HOME)")
    n.add_argument("--port", type=_port, help="port (default TETHER_NATS_PORT or 4222)")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    n.add_argument("--name", help="this node's server name (each node of a cluster needs its own)")
    n.add_argument("--cluster-port", type=_port, help="join a JetStream cluster: listen for routes on this port")
    n.add_argument("--routes", help="the other nodes' cluster URLs, comma-separated (nats://b:6222,nats://c:6222)")
    n.set_defaults(fn=cmd_nats)

    g = sub.add_parser("gateway", parents=[insecure], help="run a gateway (tether.infer; with --http also the HTTP API)")
    g.add_argument("--http", action="store_true", help="also serve HTTP (/infer, /v1/*, dashboard at /)")
    g.add_argument("--port", type=_port, help="HTTP port (default TETHER_HTTP_PORT or 8080; 0: any free)")
    g.set_defaults(fn=cmd_gateway)
    sub.add_parser("scheduler", parents=[insecure], help="run a scheduler").set_defaults(fn=cmd_scheduler)

    w = sub.add_parser("worker", parents=[insecure], help="run a worker")
    w.add_argument("--models", help="comma-separated model specs (default TETHER_MODELS or echo)")
    w.add_argument("--region", help="region label (default TETHER_REGION or local)")
    w.add_argument("--name", default="worker", help="identity name under TETHER_HOME/keys (default worker)")
    w.add_argument("--grace", type=seconds, default=30.0, help="seconds to finish in-flight jobs on SIGTERM")
    w.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], help="weights' dtype (all models)")
    w.add_argument(
        "--quantize", choices=["8bit", "4bit"], help="bitsandbytes quantization (CUDA only; refused without a GPU)"
    )
    w.set_defaults(fn=cmd_worker)

    i = sub.add_parser("infer", help="send one request to tether.infer and print the result")
    i.add_argument("text", help="the input text")
    i.add_argument("--model", required=True, help="model id, e.g. echo or smollm2-135m-instruct")
    i.add_argument("--version", default="1", help="model version (default 1)")
    i.add_argument("--tenant", default="demo", help="tenant id (default demo)")
    i.add_argument("--max-new-tokens", type=int, help="generation length limit")
    i.add_argument("--temperature", type=float, help="sampling temperature (default greedy)")
    i.add_argument("--idempotency-key", help="same key, same job, same result")
    i.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    i.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    i.add_argument("--msgpack", action="store_true", help="send and receive msgpack instead of JSON")
    i.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    i.set_defaults(fn=cmd_infer)

    st = sub.add_parser("status", parents=[insecure], help="workers, models, heartbeat ages, queue depth")
    st.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(fn=cmd_status)

    j = sub.add_parser("jobs", help="job state from the store")
    jsub = j.add_subparsers(dest="jobs_cmd", required=True, metavar="SUBCOMMAND")
    jl = jsub.add_parser("list", help="recent jobs")
    jl.add_argument("--status", help="only this status (QUEUED, RUNNING, COMPLETED, ...)")
    jl.add_argument("--limit", type=int, default=20)
    js = jsub.add_parser("show", help="one job: state, attempts, placement, result")
    js.add_argument("job_id", help="the job id (jobId of a reply)")
    jr = jsub.add_parser("replay", help="replay final results from the RESULTS stream")
    jr.add_argument("--since", help="from this long ago (30s, 10m, 2h, 1d) or an ISO time (default: all)")
    jr.add_argument("--json", action="store_true", help="one result per line as JSON")
    j.set_defaults(fn=cmd_jobs)

    d = sub.add_parser("dlq", help="dead-lettered jobs: list, show, retry")
    dsub = d.add_subparsers(dest="dlq_cmd", required=True, metavar="SUBCOMMAND")
    dl = dsub.add_parser("list", help="every entry of the DLQ stream")
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    ds = dsub.add_parser("show", help="one entry: submission, last error, every attempt")
    ds.add_argument("job_id")
    dr = dsub.add_parser("retry", help="resubmit a dead job's input as a new job")
    dr.add_argument("job_id")
    dr.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(fn=cmd_dlq)

    add_control(sub)  # drain, evict

    k = sub.add_parser("apikeys", help="API keys for the HTTP gateway (stored hashed in NATS)")
    ksub = k.add_subparsers(dest="keys_cmd", required=True, metavar="SUBCOMMAND")
    ka = ksub.add_parser("add", help="create a key for a tenant and print it (once)")
    ka.add_argument("--tenant", required=True, help="the tenant requests with this key run as")
    ka.add_argument("--name", default="", help="a label to recognise the key by")
    ksub.add_parser("list", help="key digests, tenants and labels (never the keys)")
    kr = ksub.add_parser("revoke", help="revoke keys by digest prefix (from `apikeys list`)")
    kr.add_argument("digest", help="at least 8 hex digits of the key's digest")
    k.set_defaults(fn=cmd_apikeys)

    b = sub.add_parser("bench", help="send requests through tether.infer; print latency and throughput")
    b.add_argument("--model", default="echo", help="model id (default echo)")
    b.add_argument("-n", type=int, default=1000, help="number of requests (default 1000)")
    b.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    b.add_argument("--text", default="hello", help="the input of every request")
    b.set_defaults(fn=cmd_bench)
    add_keys(sub)
    add_models(sub)
    add_certs(sub)
    add_canary(sub)
    return p


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


def main(argv: list[str] | None = None) -> int:
    from nats.errors import Error as NatsError

    from tether.errors import InvalidRequest, TetherError

    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        return 130
    except TetherError as exc:  # a bad argument value is a usage error (2), anything else failed (1)
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidRequest) else 1
    except (OSError, NatsError) as exc:
        print(f"error [unavailable]: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a malformed key, allowlist line, directory, ...: the input's fault
        print(f"error [invalid_request]: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
