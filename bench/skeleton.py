"""The floor under ``tether.infer``: the same hops, streams and client code, with no Tether logic.

``bench/pipeline.py`` measures the real system; this measures what its message
pattern alone costs on the same machine, so the gap between the two is the
cost of Tether's own work (validation, quotas, placement, SQLite, signatures,
telemetry). Three bare processes stand in for the roles, on the same
nats-server, with Tether's own JOBS and RESULTS definitions (copied onto ``skeleton.*`` subjects), ``JetPublisher``,
``PullConsumer`` and uvloop:

  * gateway: ``tether.infer`` request -> publish into JOBS (waits for the PubAck)
    -> waits for the result on ``tether.results.<id>`` -> replies;
  * scheduler: pulls JOBS -> sends the job to the worker (every job of one
    loop turn in one message, as Tether's dispatcher does) -> acks the JOBS
    message when the worker reports;
  * worker: publishes the result into RESULTS (waits for the PubAck) -> reports
    to the scheduler (one message per loop turn).

Every message carries the headers Tether's carry (``correlation-id``,
``traceparent``, content type, ``Nats-Msg-Id`` where Tether sets it), so the
protocol work is the same. It prints latency at concurrency 1 and jobs/s at
concurrency 64 for raw request/reply, the skeleton and (``--with-tether``)
``tether.infer`` in the same run, with CPU per job per process.

    .venv/bin/python bench/skeleton.py [--n-latency 1000] [--n-throughput 10000] [--with-tether]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nats
from pipeline import (  # bench/pipeline.py
    RESPONDER,
    cpu_snapshot,
    latency,
    pct,
    quiet_errors,
    throughput,
    wait_ready,
)

from tether import subjects
from tether.natsserver import free_port

ROOT = Path(__file__).resolve().parent.parent

ROLE = r'''
import asyncio, dataclasses, itertools, sys, msgpack, uvloop
from nats.aio.client import Client
from services.scheduler.pull import PullConsumer
from streams import JOBS, RESULTS, SCHEDULER_CONSUMER, Topology, apply, topology
from tether.jetpub import JetPublisher
from tether.settings import Settings

def skeleton_topology(server_info):
    """Tether's own JOBS and RESULTS definitions and consumer, renamed onto skeleton.* subjects."""
    real = topology(Settings(), server_info)
    by_name = {c.name: c for c in real.streams}
    jobs = dataclasses.replace(by_name[JOBS], name="SKJOBS", subjects=["skeleton.jobs.>"])
    results = dataclasses.replace(by_name[RESULTS], name="SKRESULTS", subjects=["skeleton.results.>"])
    consumer = dataclasses.replace(dict(real.consumers)[JOBS], filter_subject="skeleton.jobs.>")
    return Topology(streams=(jobs, results), consumers=(("SKJOBS", consumer),))

H = {"correlation-id": "0123456789abcdef0123",
     "traceparent": "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"}
MP = "application/msgpack"

async def gateway(nc):
    pub = JetPublisher.of(nc)
    waiting = {}
    ids = itertools.count()
    async def on_result(msg):
        fut = waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if fut is not None:
            fut.set_result(msg.data)
    async def answer(msg):
        job = f"j{next(ids)}"
        fut = asyncio.get_running_loop().create_future()
        waiting[job] = fut
        await pub.publish("skeleton.jobs.bench.echo.1", msgpack.packb({"jobId": job, "input": msg.data}),
                          stream="SKJOBS", headers={**H, "Content-Type": MP, "Nats-Msg-Id": job})
        result = msgpack.unpackb(await fut)
        await nc.publish(msg.reply, result["result"], headers={**H, "Content-Type": "application/json"})
    tasks = set()
    def spawn(coro):
        t = asyncio.ensure_future(coro); tasks.add(t); t.add_done_callback(tasks.discard)
    async def on_infer(msg):
        spawn(answer(msg))
    await nc.subscribe("skeleton.results.>", cb=on_result, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await nc.subscribe("skeleton.infer", queue="g", cb=on_infer, pending_msgs_limit=-1, pending_bytes_limit=-1)

async def scheduler(nc):
    held, outbox, wake = {}, [], asyncio.Event()
    async def sender():
        while True:
            await wake.wait(); wake.clear()
            items, outbox[:] = list(outbox), []
            await nc.publish("skeleton.dispatch.w1", msgpack.packb(items), headers={**H, "Content-Type": MP})
    async def on_report(msg):
        for job in msgpack.unpackb(msg.data):
            m = held.pop(job, None)
            if m is not None:
                await m.ack()
    def on_job(msg):
        job = msgpack.unpackb(msg.data)
        held[job["jobId"]] = msg
        outbox.append(job); wake.set()
    await nc.subscribe("skeleton.reports", cb=on_report, pending_msgs_limit=-1, pending_bytes_limit=-1)
    asyncio.ensure_future(sender())
    puller = PullConsumer(nc, stream="SKJOBS", durable=SCHEDULER_CONSUMER, handler=on_job,
                          room=lambda: 4096 - len(held), batch=256)
    asyncio.ensure_future(puller.run(lambda: True))

async def worker(nc):
    pub = JetPublisher.of(nc)
    done, wake = [], asyncio.Event()
    async def reporter():
        while True:
            await wake.wait(); wake.clear()
            items, done[:] = list(done), []
            await nc.publish("skeleton.reports", msgpack.packb(items), headers={**H, "Content-Type": MP})
    async def run(job):
        body = msgpack.packb({"jobId": job["jobId"], "status": "completed", "result": job["input"]})
        await pub.publish("skeleton.results." + job["jobId"], body, stream="SKRESULTS",
                          headers={**H, "Content-Type": MP, "Nats-Msg-Id": "result:" + job["jobId"]})
        done.append(job["jobId"]); wake.set()
    tasks = set()
    async def on_dispatch(msg):
        for job in msgpack.unpackb(msg.data):
            t = asyncio.ensure_future(run(job)); tasks.add(t); t.add_done_callback(tasks.discard)
    asyncio.ensure_future(reporter())
    await nc.subscribe("skeleton.dispatch.w1", cb=on_dispatch, pending_msgs_limit=-1, pending_bytes_limit=-1)

async def main(role, url):
    nc = Client()
    await nc.connect(url, pending_size=64 * 1024 * 1024)
    js = nc.jetstream()
    await apply(js, skeleton_topology(nc._server_info))
    await {"gateway": gateway, "scheduler": scheduler, "worker": worker}[role](nc)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.run(main(sys.argv[1], sys.argv[2]))
'''


async def run(args: argparse.Namespace) -> None:
    root = ROOT
    home = Path(tempfile.mkdtemp(prefix="tether-skeleton-"))
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {**os.environ, "TETHER_HOME": str(home), "TETHER_NATS_PORT": str(port), "TETHER_MODELS": "echo"}
    env.pop("TETHER_NATS_URL", None)
    # ``tether up`` gives the server (same config as pipeline.py) and, with --with-tether, the real roles.
    up_args = ["up", "--no-demo"] if args.with_tether else ["nats"]
    up = subprocess.Popen(
        [sys.executable, "-m", "tether.cli", *up_args],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if args.with_tether:
            await wait_ready(url)
        else:
            await _wait_server(url)
        for role in ("scheduler", "worker", "gateway"):
            p = subprocess.Popen(
                [sys.executable, "-c", ROLE, role, url], cwd=root, env=env, stdout=subprocess.PIPE
            )
            assert p.stdout is not None
            p.stdout.readline()
            procs.append(p)
        responder = subprocess.Popen([sys.executable, "-c", RESPONDER, url], stdout=subprocess.PIPE)
        procs.append(responder)
        assert responder.stdout is not None
        responder.stdout.readline()
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
        raw_body = b'{"input":"hello"}'
        infer_body = b'{"tenantId": "bench", "modelId": "echo", "version": "1", "input": "hello"}'
        cases = [("raw request/reply", "bench.raw", raw_body), ("skeleton", "skeleton.infer", raw_body)]
        if args.with_tether:
            cases.append(("tether.infer", subjects.INFER, infer_body))
        for _, subject, body in cases:
            await latency(nc, subject, body, 100)  # warm-up
        lat = {name: await latency(nc, subject, body, args.n_latency) for name, subject, body in cases}
        tp: dict[str, float] = {}
        cpu: dict[str, dict[str, tuple[float, int, int]]] = {}
        for name, subject, body in cases:
            before = _cpu(up.pid, procs)
            tp[name] = await throughput(nc, subject, body, args.n_throughput, args.concurrency)
            after = _cpu(up.pid, procs)
            cpu[name] = {k: tuple(a - b for a, b in zip(v, before.get(k, (0.0, 0, 0)), strict=True))  # type: ignore[misc]
                         for k, v in after.items()}
        await nc.close()

        raw = cases[0][0]
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
        print(f"latency at concurrency 1 ({args.n_latency} requests), ms; throughput at concurrency {args.concurrency}:")
        print(f"  {'':18}{'p50':>8}{'p95':>8}{'p99':>8}{'p50/raw':>9}{'per s':>9}{'/raw':>7}")
        for name, _, _ in cases:
            v = lat[name]
            print(
                f"  {name:18}{pct(v, 0.5):8.3f}{pct(v, 0.95):8.3f}{pct(v, 0.99):8.3f}"
                f"{pct(v, 0.5) / pct(lat[raw], 0.5):8.2f}x{tp[name]:9.0f}{tp[name] / tp[raw]:7.3f}"
            )
        for name, _, _ in cases[1:]:
            print(f"CPU us per job, {name}:")
            for proc, (secs, _, _) in sorted(cpu[name].items(), key=lambda kv: -kv[1][0]):
                # every stand-in role, even at 0 (CPU times tick in 10 ms: a short run may see none)
                if proc.startswith("skeleton ") or secs / args.n_throughput * 1e6 >= 1:
                    print(f"  {proc:18}{secs / args.n_throughput * 1e6:8.0f}")
    finally:
        for p in procs:
            p.terminate()
        up.terminate()
        up.wait(60)
        shutil.rmtree(home, ignore_errors=True)


def _cpu(root_pid: int, procs: list[subprocess.Popen[bytes]]) -> dict[str, tuple[float, int, int]]:
    out = cpu_snapshot(root_pid)
    for p in procs:
        for name, v in cpu_snapshot(p.pid).items():
            if name == "bench client":
                continue
            role = next((r for r in ("gateway", "scheduler", "worker") if f" {r} " in _cmd(p)), "responder")
            key = f"skeleton {role}" if role != "responder" else "responder"
            out[key] = v
    return out


def _cmd(p: subprocess.Popen[bytes]) -> str:
    return " ".join(map(str, p.args)) + " "  # type: ignore[arg-type]


async def _wait_server(url: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            nc = await nats.connect(url, error_cb=quiet_errors, allow_reconnect=False)
            await nc.close()
            return
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-latency", type=int, default=1000)
    p.add_argument("--n-throughput", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--with-tether", action="store_true", help="also start the real system and measure tether.infer")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
