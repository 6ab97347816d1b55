"""Pipeline benchmark: raw NATS request/reply vs ``tether.infer`` end to end, in the same run.

Starts the system the way ``tether up`` does (nats-server, scheduler, worker,
gateway as separate processes) with only the ``echo`` model, plus a trivial
nats-py responder process, then measures on the same server:

  * latency p50/p95/p99 at concurrency 1, and
  * throughput (requests/s) at concurrency 64,

for raw request/reply and for tether.infer, and prints the ratios and, for each process,
its CPU time and read and write system calls per job during the throughput run.

    .venv/bin/python bench/pipeline.py [--n-latency 1000] [--n-throughput 10000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil

from tether import subjects
from tether.natsserver import free_port

RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def cb(msg):
        await msg.respond(msg.data)
    await nc.subscribe("bench.raw", queue="raw", cb=cb)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_snapshot(root_pid: int) -> dict[str, tuple[float, int, int]]:
    """CPU seconds (user + system), read and write syscalls so far, per process under ``root_pid`` and this one."""
    out: dict[str, tuple[float, int, int]] = {}
    procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True), psutil.Process()]
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())
            t = p.cpu_times()
            io = p.io_counters()
        except psutil.Error:
            continue
        name = "bench client" if p.pid == os.getpid() else next(
            (r for r in ("nats-server", "scheduler", "worker", "gateway", " up") if r in cmd), p.name()
        ).strip()
        cpu, reads, writes = out.get(name, (0.0, 0, 0))
        out[name] = (cpu + t.user + t.system, reads + io.read_count, writes + io.write_count)
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def failed(data: bytes) -> bool:
    """An error reply (``{"error": ...}``): not a job done."""
    return data[:20].lstrip().startswith(b'{"error"')


async def latency(nc: nats.NATS, subject: str, body: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        msg = await nc.request(subject, body, timeout=10)
        if failed(msg.data):
            raise RuntimeError(f"{subject} answered an error, which is no latency sample: {msg.data[:300]!r}")
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def throughput(nc: nats.NATS, subject: str, body: bytes, n: int, concurrency: int) -> float:
    """``concurrency`` clients, each sending its next request as soon as its last is answered."""
    errors = 0
    left = n

    async def client() -> None:
        nonlocal errors, left
        while left > 0:
            left -= 1
            msg = await nc.request(subject, body, timeout=60)
            if failed(msg.data):
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    dt = time.perf_counter() - t0
    if errors:
        print(f"  ({errors} of {n} replies were errors: not counted)")
    return (n - errors) / dt


async def quiet_errors(exc: Exception) -> None:
    """nats-py's default error callback prints a traceback for every refused connect while we poll."""


async def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    body = json.dumps({"tenantId": "bench", "modelId": "echo", "version": "1", "input": "ping"}).encode()
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(url, error_cb=quiet_errors, allow_reconnect=False)
            try:
                msg = await nc.request(subjects.INFER, body, timeout=2)
                if b"result" in msg.data:
                    return
            finally:
                await nc.close()
        except Exception:
            pass
        await asyncio.sleep(0.3)
    raise TimeoutError("system not ready")


async def wait_benchmarked(home: Path, url: str, timeout: float = 120) -> None:
    """Until every worker has reported its start-up admission benchmark (unless it is switched off):
    its allocation probe writes up to 1 GB page by page, which would otherwise share the cores with
    the first measurements."""
    from tether.settings import Settings
    from tether.status import snapshot

    settings = Settings.from_env(home=home, nats_url=url)
    if not settings.admission_bench:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = (await snapshot(settings))["workers"]
        if workers and all(w["gflops"] is not None for w in workers):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("the worker did not report its admission benchmark")


async def run(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {**os.environ, "TETHER_HOME": str(home), "TETHER_NATS_PORT": str(port), "TETHER_MODELS": "echo"}
    env.pop("TETHER_NATS_URL", None)
    up = subprocess.Popen(
        [sys.executable, "-m", "tether.cli", "up", "--no-demo"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    responder = None
    try:
        await wait_ready(url)
        await wait_benchmarked(home, url)
        responder = subprocess.Popen([sys.executable, "-c", RESPONDER, url], stdout=subprocess.PIPE)
        assert responder.stdout is not None
        responder.stdout.readline()
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
        raw_body = b'{"input":"hello"}'
        infer_body = json.dumps(
            {"tenantId": "bench", "modelId": "echo", "version": "1", "input": "hello"}
        ).encode()

        await latency(nc, "bench.raw", raw_body, 100)  # warm-up
        await latency(nc, subjects.INFER, infer_body, 100)
        raw_lat = await latency(nc, "bench.raw", raw_body, args.n_latency)
        inf_lat = await latency(nc, subjects.INFER, infer_body, args.n_latency)
        raw_tp = await throughput(nc, "bench.raw", raw_body, args.n_throughput, args.concurrency)
        cpu0 = cpu_snapshot(up.pid)
        inf_tp = await throughput(nc, subjects.INFER, infer_body, args.n_throughput, args.concurrency)
        cpu1 = cpu_snapshot(up.pid)
        await nc.close()

        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
        print(f"latency at concurrency 1 ({args.n_latency} requests), ms:")
        print(f"  {'':18}{'p50':>8}{'p95':>8}{'p99':>8}")
        for name, lat in (("raw request/reply", raw_lat), ("tether.infer", inf_lat)):
            print(f"  {name:18}{pct(lat, 0.5):8.3f}{pct(lat, 0.95):8.3f}{pct(lat, 0.99):8.3f}")
        print(
            f"  ratio tether/raw  {pct(inf_lat, 0.5) / pct(raw_lat, 0.5):7.2f}x"
            f"{pct(inf_lat, 0.95) / pct(raw_lat, 0.95):7.2f}x{pct(inf_lat, 0.99) / pct(raw_lat, 0.99):7.2f}x"
        )
        print(f"throughput at concurrency {args.concurrency} ({args.n_throughput} requests):")
        print(f"  raw request/reply {raw_tp:10.0f} req/s")
        print(f"  tether.infer      {inf_tp:10.0f} jobs/s   ({inf_tp / raw_tp:.3f} of raw)")
        print(
            f"per job during the tether.infer throughput run (all {os.cpu_count()} cores shared):"
            f"\n  {'':18}{'CPU us':>8}{'reads':>8}{'writes':>8}"
        )
        zero = (0.0, 0, 0)
        for name in sorted(cpu1, key=lambda k: cpu0.get(k, zero)[0] - cpu1[k][0]):
            used = [(a - b) / args.n_throughput for a, b in zip(cpu1[name], cpu0.get(name, zero), strict=True)]
            print(f"  {name:18}{used[0] * 1e6:8.0f}{used[1]:8.2f}{used[2]:8.2f}")
        print(f"  mean latency tether.infer {statistics.mean(inf_lat):.3f} ms at concurrency 1")
    finally:
        if responder is not None:
            responder.terminate()
        up.terminate()
        up.wait(60)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-latency", type=int, default=1000)
    p.add_argument("--n-throughput", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=64)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
