"""Signed presence heartbeats: seal cost on the signer, verifications per second on one core.

Run: .venv/bin/python bench/presence.py [N]

Three receiver figures: the bare envelope ``Verifier``; the scheduler's real
admission path (``FleetView.accept``: subject and id binding, signature,
nonce, msgpack decode, ``Presence`` validation, fleet update); and replays.
The signer figure compares a worker's heartbeat encoded as before (JSON) with
the signed envelope (msgpack + Ed25519).
"""

from __future__ import annotations

import os
import sys
import time

import msgpack
import nacl.bindings

from schemas import ModelState, Presence, ServedModel
from tether import codec, subjects
from tether.envelope import PURPOSE_PRESENCE, Verifier, open_envelope, seal
from tether.fleet import FleetView
from tether.identity import Identity
from tether.signed import PresenceGate, seal_message


def presence_payload(worker: Identity, seq: int) -> bytes:
    """A ~300-byte msgpack heartbeat shaped like the worker's presence message."""
    return msgpack.packb(
        {
            "workerId": worker.node_id,
            "region": "local",
            "seq": seq,
            "state": "HEALTHY",
            "tier": "gpu-a",
            "queueDepth": 3,
            "inflight": 1,
            "maxConcurrency": 4,
            "gpu": {"name": "NVIDIA H100 80GB HBM3", "memTotalMb": 81559, "memFreeMb": 60211, "util": 0.41},
            "cpu": {"cores": 16, "load1": 2.35},
            "models": ["sentence-transformers/all-MiniLM-L6-v2@1", "HuggingFaceTB/SmolLM2-135M@1"],
            "startedAt": 1_700_000_000.123,
            "version": "0.1.0",
        },
        use_bin_type=True,
    )


def heartbeat(worker: Identity, seq: int) -> Presence:
    served = [
        ServedModel(model_id=m, version="1", task="generate", state=ModelState.WARM) for m in ("a", "b")
    ]
    return Presence(
        worker_id=worker.node_id, region="local", device_class="gpu:nvidia-h100", capacity=4, queue_depth=3,
        models=served, heartbeat_s=5.0, started_at=1_700_000_000.0, seq=seq, ts=time.time(),
        cpu_percent=12.5, mem_percent=40.0,
    )  # fmt: skip


def fleet_figures(workers: list[Identity], n: int) -> tuple[float, float, float]:
    """(FleetView.accept msg/s, JSON encode us, sign+encode us) for n real heartbeats."""
    beats = [heartbeat(workers[i % len(workers)], i + 1) for i in range(n)]
    t0 = time.perf_counter()
    for b in beats:
        codec.encode(b.wire())
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    signed = [seal_message(workers[i % len(workers)], b, PURPOSE_PRESENCE) for i, b in enumerate(beats)]
    sign_s = time.perf_counter() - t0
    fleet = FleetView(
        heartbeat_s=5.0, gate=PresenceGate(Verifier([w.public_key for w in workers], role="worker"))
    )
    subs = [subjects.presence_subject("local", w.node_id) for w in workers]
    t0 = time.perf_counter()
    for i, data in enumerate(signed):
        fleet.accept(subs[i % len(workers)], data)
    accept_s = time.perf_counter() - t0
    assert fleet.rejected == 0 and len(fleet.workers()) == len(workers)
    return n / accept_s, plain_s / n * 1e6, sign_s / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    workers = [Identity.generate("worker") for _ in range(50)]
    payloads = [presence_payload(w, i) for i, w in enumerate(workers)]

    t0 = time.perf_counter()
    msgs = [seal(workers[i % 50], payloads[i % 50], PURPOSE_PRESENCE) for i in range(n)]
    seal_s = time.perf_counter() - t0

    verifier = Verifier([w.public_key for w in workers], skew_s=30.0)
    ids = [w.node_id for w in workers]
    t0 = time.perf_counter()
    for i, m in enumerate(msgs):
        verifier.verify(m, purpose=PURPOSE_PRESENCE, expect_node_id=ids[i % 50])
    verify_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for m in msgs:
        open_envelope(m)
    parse_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for m in msgs:  # every one is a replay now: full cost up to the nonce check
        try:
            verifier.verify(m, purpose=PURPOSE_PRESENCE)
        except Exception:
            pass
    replay_s = time.perf_counter() - t0

    sk = workers[0].signing_key
    smsg = sk.sign(b"\x00" * len(msgs[0]))
    pk = workers[0].public_key
    k = min(n, 5000)
    t0 = time.perf_counter()
    for _ in range(k):
        nacl.bindings.crypto_sign_open(smsg, pk)
    raw_s = time.perf_counter() - t0

    accept_rate, plain_us, sign_us = fleet_figures(workers, n)

    print(f"messages                 {n} from {len(workers)} workers, 1 core")
    print(f"scheduler admission      {accept_rate:,.0f} heartbeats/s (FleetView.accept, full path)")
    print(f"worker heartbeat encode  {plain_us:.1f} us unsigned JSON -> {sign_us:.1f} us signed "
          f"(+{sign_us - plain_us:.1f} us per heartbeat, once every T)")  # fmt: skip
    print(f"payload bytes            {len(payloads[0])}")
    print(f"envelope bytes           {len(msgs[0])} (overhead {len(msgs[0]) - len(payloads[0])})")
    print(f"seal                     {seal_s / n * 1e6:.1f} us/msg ({n / seal_s:,.0f} msg/s)")
    print(f"verify (accepted)        {n / verify_s:,.0f} msg/s ({verify_s / n * 1e6:.1f} us/msg)")
    print(f"verify (replays)         {n / replay_s:,.0f} msg/s ({replay_s / n * 1e6:.1f} us/msg)")
    print(f"raw libsodium verify     {k / raw_s:,.0f} msg/s ({raw_s / k * 1e6:.1f} us/msg, the floor)")
    print(f"parse only               {parse_s / n * 1e6:.1f} us/msg")
    print(f"accepted / rejected      {verifier.accepted} / {dict(verifier.rejections)}")
    print(f"nonce cache entries      {len(verifier.nonces)}")


if __name__ == "__main__":
    main()
