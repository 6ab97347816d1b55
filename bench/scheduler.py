"""Scheduler benchmark: placement decision time by fleet size, and presence ingest rate.

    .venv/bin/python bench/scheduler.py [--decisions 20000] [--heartbeats 100000]

1. Placement: a FleetView holding 100, 1,000 and 10,000 simulated workers
   (3 regions, 2 device classes, random queue depths, every worker serving the
   job's model plus others), the scheduler's AffinityPlacement with reliability
   and RTT lookups; p50/p99 of one ``choose()`` and the growth from 100 to
   10,000 workers. Target: p99 under 200 us at 10,000, growth well below linear.
2. Presence ingest of signed heartbeats: (a) in process, through the scheduler's
   admission path (signature, nonce, id binding, decode, validation, fleet update);
   (b) through a real nats-server, a publisher process sends heartbeats of 200
   workers as fast as it can while one FleetView subscriber (what a scheduler
   runs) admits them. Target >= 10,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from schemas import ModelState, Presence, ServedModel
from services.scheduler.scoring import AffinityPlacement, JobNeeds
from tether import codec, subjects
from tether.envelope import PURPOSE_PRESENCE, Verifier
from tether.fleet import FleetView
from tether.identity import Identity
from tether.natsserver import NatsServer
from tether.signed import PresenceGate, envelope_headers, seal_message

REGIONS = ("eu", "us", "ap")


def make_presence(i: int, rng: random.Random, seq: int = 1) -> Presence:
    models = [ServedModel(model_id="m", version="1", task="generate", state=ModelState.WARM)]
    models += [
        ServedModel(model_id=f"other-{k}", version="1", task="generate", state=ModelState.WARM)
        for k in rng.sample(range(50), 3)
    ]
    return Presence(
        worker_id=f"w-{i:05d}",
        region=REGIONS[i % 3],
        device_class="cuda" if i % 4 == 0 else "cpu",
        capacity=8,
        queue_depth=rng.randrange(0, 8),
        models=models,
        heartbeat_s=5.0,
        started_at=1.0,
        seq=seq,
        ts=time.time(),
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def placement_times(n_workers: int, decisions: int) -> tuple[float, float]:
    rng = random.Random(n_workers)
    now = time.time()
    gate = PresenceGate(Verifier([], role="worker"))  # presences go straight to observe()
    fleet = FleetView(heartbeat_s=5.0, gate=gate, clock=lambda: now)  # every worker fresh for the whole run
    for i in range(n_workers):
        fleet.observe(make_presence(i, rng))
    reliability = {f"w-{i:05d}": rng.random() for i in range(n_workers)}
    rtt = {f"w-{i:05d}": rng.random() / 100 for i in range(n_workers)}
    placement = AffinityPlacement(fleet, reliability=reliability.__getitem__, rtt=rtt.get, rng=rng)
    needs = JobNeeds("m", "1", region="eu", device_class="cuda")
    inflight = {f"w-{i:05d}": rng.randrange(0, 4) for i in range(0, n_workers, 7)}
    times = []
    for _ in range(decisions):
        t0 = time.perf_counter_ns()
        choice = placement.choose(needs, inflight=inflight)
        times.append((time.perf_counter_ns() - t0) / 1000)
        assert choice is not None
    return pct(times, 0.5), pct(times, 0.99)


def ingest_in_process(n: int) -> float:
    """Signed heartbeats through the scheduler's real admission path (see bench/presence.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from presence import fleet_figures

    workers = [Identity.generate("worker") for _ in range(50)]
    rate, _plain_us, _sign_us = fleet_figures(workers, n)
    return rate


PUBLISHER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1], pending_size=256 * 1024 * 1024)
    blob = open(sys.argv[2], "rb").read()
    for record in blob.split(b"\\n--\\n"):
        subject, data = record.split(b" ", 1)
        await nc.publish(subject.decode(), data, headers={"Content-Type": sys.argv[3]})
    await nc.flush(timeout=60)
    await nc.close()
asyncio.run(main())
"""


async def ingest_through_nats(n: int, helpers: int) -> tuple[float, int]:
    """A publisher process blasts signed heartbeats; one FleetView, subscribed as a scheduler
    subscribes (``FleetView.start``: signatures checked in ``helpers`` processes), admits them."""
    import nats

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-presence-"))
    server = NatsServer(store_dir=tmp / "js", log_file=tmp / "nats.log")
    server.start()
    try:
        workers = [Identity.generate("worker") for _ in range(200)]
        rng = random.Random(11)
        records = []
        for i in range(n):
            k = i % len(workers)
            w = workers[k]
            # each worker serves the same models in every heartbeat (as real workers do); load changes
            p = make_presence(k, random.Random(k), seq=1 + i // len(workers)).model_copy(
                update={"worker_id": w.node_id, "queue_depth": rng.randrange(0, 8)}
            )
            data = seal_message(w, p, PURPOSE_PRESENCE)
            records.append(subjects.presence_subject(p.region, w.node_id).encode() + b" " + data)
        (tmp / "payloads").write_bytes(b"\n--\n".join(records))
        nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024)
        gate = PresenceGate(Verifier([w.public_key for w in workers], role="worker"))
        fleet = FleetView(heartbeat_s=5.0, gate=gate)
        fleet.verify_workers = helpers
        await fleet.start(nc, nc.jetstream())
        await nc.flush()
        ingest = fleet.ingest
        assert ingest is not None
        ctype = envelope_headers()[codec.CONTENT_TYPE]
        pub = subprocess.Popen([sys.executable, "-c", PUBLISHER, server.url, str(tmp / "payloads"), ctype])
        first = last = 0.0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if not first and ingest.received:
                first = time.perf_counter()
            if ingest.admitted + fleet.rejected + ingest.dropped >= n:
                break
            await asyncio.sleep(0.001)
        last = time.perf_counter()
        pub.wait(60)
        count = ingest.admitted
        await fleet.stop()
        await nc.close()
        assert fleet.rejected == 0 and ingest.dropped == 0, (dict(fleet.rejections), ingest.dropped)
        return count / max(1e-9, last - first), count
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decisions", type=int, default=20_000)
    p.add_argument("--heartbeats", type=int, default=30_000)
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"placement decision time ({args.decisions} decisions each), microseconds:")
    results = {}
    for n in (100, 1_000, 10_000):
        p50, p99 = placement_times(n, args.decisions)
        results[n] = (p50, p99)
        print(f"  {n:>6} workers   p50 {p50:7.1f}   p99 {p99:7.1f}")
    g50 = results[10_000][0] / results[100][0]
    g99 = results[10_000][1] / results[100][1]
    print(f"  growth 100 -> 10,000 workers (100x): p50 x{g50:.2f}, p99 x{g99:.2f}")
    rate = ingest_in_process(args.heartbeats)
    print(f"presence ingest, in process (signature, nonce, decode, validate, apply): {rate:,.0f} heartbeats/s")
    for helpers in (0, 1, 2):
        rate, count = asyncio.run(ingest_through_nats(args.heartbeats, helpers))
        where = "on the event loop" if helpers == 0 else f"{helpers} signature-check process(es)"
        print(
            f"presence ingest through nats-server, one scheduler's FleetView, {where}: "
            f"{rate:,.0f} heartbeats/s ({count} admitted)"
        )


if __name__ == "__main__":
    main()
