"""The ``tether`` command line.

    tether up                       everything on this machine (what `make run` calls)
    tether nats|gateway|scheduler|worker   one role, pointed at TETHER_NATS_URL
    tether infer TEXT --model M     one request through tether.infer
    tether status                   workers, models, heartbeat ages, queue depth
    tether jobs list | show ID      job state, attempts and placement from the store
    tether keys gen|show|allow|deny|list   node keys and the trust lists (tether/keys_cli.py)
    tether models publish|verify    signed model artifacts (tether/artifacts/cli.py)
    tether certs gen|users          TLS and per-role users for infra/nats/prod.conf (tether/certs.py)

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
    server = NatsServer(store_dir=s.home / "jetstream", port=args.port or s.nats_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with server:
        print(f"nats-server listening on {server.url} (JetStream store {s.home / 'jetstream'})", flush=True)
        while not stop.wait(0.5):
            if server.proc is not None and server.proc.poll() is not None:
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

    return _role(lambda: run_gateway(_settings(args)))


def cmd_scheduler(args: argparse.Namespace) -> int:
    from tether.roles import run_scheduler

    return _role(lambda: run_scheduler(_settings(args)))


def cmd_worker(args: argparse.Namespace) -> int:
    from tether.roles import run_worker
    from tether.security import node_identity

    s = _settings(args)
    identity = node_identity(s, "worker", args.name)
    return _role(lambda: run_worker(s, identity=identity, grace_s=args.grace))


def cmd_infer(args: argparse.Namespace) -> int:
    from nats.errors import Error as NatsError
    from nats.errors import NoRespondersError

    from tether import client, codec, subjects
    from tether.connection import connect
    from tether.errors import TetherError

    s = _settings(args)
    params: dict[str, Any] = {}
    if args.max_new_tokens:
        params["maxNewTokens"] = args.max_new_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature

    def fail(code: str, message: str) -> int:
        error = {"code": code, "message": message, "retryable": True}
        print(json.dumps({"error": error}) if args.json else f"error [{code}]: {message}", file=sys.stderr)
        return 1

    async def go() -> int:
        try:  # a one-shot command fails fast (nats-py: 0 would mean forever)
            nc = await connect(s.url, name="tether-cli", max_reconnect_attempts=1)
        except (OSError, NatsError) as exc:
            return fail("unavailable", f"cannot reach NATS at {s.url}: {exc}")
        try:
            reply = await client.infer(
                nc,
                model=args.model,
                version=args.version,
                tenant=args.tenant,
                input=args.text,
                params=params,
                idempotency_key=args.idempotency_key,
                timeout=args.timeout,
                encoding=codec.MSGPACK if args.msgpack else codec.JSON,
            )
        except TetherError as exc:
            print(
                json.dumps({"error": exc.to_wire()}) if args.json else f"error [{exc.code}]: {exc.message}",
                file=sys.stderr,
            )
            return 1
        except NoRespondersError:
            return fail("unavailable", f"no gateway answers {subjects.INFER} on {s.url}")
        except TimeoutError:
            return fail("timeout", f"no reply within {args.timeout}s")
        finally:
            await nc.close()
        if args.json:
            print(json.dumps(reply))
        else:
            result = reply["result"]
            print(result if isinstance(result, str) else json.dumps(result))
        return 0

    return asyncio.run(go())


def cmd_status(args: argparse.Namespace) -> int:
    from tether.status import show_status

    return asyncio.run(show_status(_settings(args), watch=args.watch, as_json=args.json))


def cmd_jobs(args: argparse.Namespace) -> int:
    from tether.status import jobs_list, jobs_show

    s = _settings(args)
    if args.jobs_cmd == "show":
        return asyncio.run(jobs_show(s, args.job_id))
    return asyncio.run(jobs_list(s, status=args.status, limit=args.limit))


def build_parser() -> argparse.ArgumentParser:
    from tether.artifacts.cli import add_parser as add_models
    from tether.certs import add_parser as add_certs
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
    n.add_argument("--port", type=int, help="port (default TETHER_NATS_PORT or 4222)")
    n.set_defaults(fn=cmd_nats)

    sub.add_parser("gateway", parents=[insecure], help="run a gateway (tether.infer)").set_defaults(
        fn=cmd_gateway
    )
    sub.add_parser("scheduler", parents=[insecure], help="run a scheduler").set_defaults(fn=cmd_scheduler)

    w = sub.add_parser("worker", parents=[insecure], help="run a worker")
    w.add_argument("--models", help="comma-separated model specs (default TETHER_MODELS or echo)")
    w.add_argument("--region", help="region label (default TETHER_REGION or local)")
    w.add_argument("--name", default="worker", help="identity name under TETHER_HOME/keys (default worker)")
    w.add_argument("--grace", type=float, default=30.0, help="seconds to finish in-flight jobs on SIGTERM")
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
    js.add_argument("job_id")
    j.set_defaults(fn=cmd_jobs)
    add_keys(sub)
    add_models(sub)
    add_certs(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
