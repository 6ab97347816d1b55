"""Presence ingest under load: signature checks in helper processes, order-sensitive work on the loop.

Real signed heartbeats and forgeries go through ``PresenceIngest`` (what
``FleetView.start`` feeds from NATS); the helper processes are real child
processes running ``python -m tether.sigcheck``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import msgpack
import pytest

from schemas import ModelAnnouncement, ModelState, Presence, ServedModel
from tether import subjects
from tether.envelope import PURPOSE_MODEL, PURPOSE_PRESENCE, Verifier, seal
from tether.fleet import FleetView
from tether.identity import Identity
from tether.presence_ingest import HELPER_TIMEOUT_S, MIN_PARALLEL, PresenceIngest
from tether.sigcheck import SigChecker, check_batch
from tether.signed import PresenceGate, seal_message


def beat(worker: Identity, seq: int) -> tuple[str, bytes]:
    p = Presence(
        worker_id=worker.node_id, region="local", device_class="cpu", capacity=4, queue_depth=seq % 4,
        models=[ServedModel(model_id="m", version="1", task="generate", state=ModelState.WARM)],
        heartbeat_s=5.0, started_at=1.0, seq=seq, ts=time.time(),
    )  # fmt: skip
    return subjects.presence_subject("local", worker.node_id), seal_message(worker, p, PURPOSE_PRESENCE)


def forged(worker: Identity, seq: int) -> tuple[str, bytes]:
    """The worker's own subject and key, with a signature that does not verify."""
    subject, data = beat(worker, seq)
    body, _sig = msgpack.unpackb(data)
    return subject, msgpack.packb([body, os.urandom(64)])


def fleet_for(workers: list[Identity]) -> FleetView:
    return FleetView(heartbeat_s=5.0, gate=PresenceGate(Verifier([w.public_key for w in workers], role="worker")))


async def settle(ingest: PresenceIngest, fleet: FleetView, total: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while ingest.admitted + fleet.rejected < total:
        assert time.monotonic() < deadline, (ingest.admitted, dict(fleet.rejections))
        await asyncio.sleep(0.01)


async def helpers_up(ingest: PresenceIngest, timeout: float = 10.0) -> None:
    """Wait until the helper processes the first batch under load started are running."""
    deadline = time.monotonic() + timeout
    while not ingest.helpers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def test_check_batch_answers_per_item() -> None:
    w = Identity.generate("worker")
    good = w.signing_key.sign(b"hello")
    other = Identity.generate("worker")
    items = [
        (w.public_key, b"hello", good.signature),
        (w.public_key, b"hellO", good.signature),  # tampered message
        (other.public_key, b"hello", good.signature),  # someone else's key
    ]
    assert check_batch(items) == [True, False, False]


async def test_helper_process_checks_batches_in_order_and_exits_with_its_input() -> None:
    w = Identity.generate("worker")
    msgs = [f"m{i}".encode() for i in range(50)]
    items = [(w.public_key, m, w.signing_key.sign(m).signature) for m in msgs]
    items[7] = (w.public_key, b"forged", items[7][2])
    checker = SigChecker()
    await checker.start()
    try:
        answers = await asyncio.gather(checker.check(items[:25]), checker.check(items[25:]))
        assert answers[0] + answers[1] == [i != 7 for i in range(50)]
    finally:
        proc = checker._proc
        await checker.stop()
    assert proc is not None and proc.returncode == 0  # closed stdin: the child exits by itself


async def test_the_helper_runs_this_tether_not_one_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = tmp_path / "tether"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "sigcheck.py").write_text(  # answers "valid" to everything
        "import struct, sys, msgpack\n"
        "def main():\n"
        "    L = struct.Struct('>I')\n"
        "    while (h := sys.stdin.buffer.read(4)):\n"
        "        items = msgpack.unpackb(sys.stdin.buffer.read(L.unpack(h)[0]))\n"
        "        out = msgpack.packb([True] * len(items))\n"
        "        sys.stdout.buffer.write(L.pack(len(out)) + out); sys.stdout.buffer.flush()\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    monkeypatch.chdir(tmp_path)
    w = Identity.generate("worker")
    checker = SigChecker()
    await checker.start()
    try:
        forged = (w.public_key, b"forged", w.signing_key.sign(b"real").signature)
        assert await checker.check([forged]) == [False]
    finally:
        await checker.stop()


async def test_ingest_under_load_admits_real_heartbeats_and_refuses_forgeries() -> None:
    workers = [Identity.generate("worker") for _ in range(20)]
    fleet = fleet_for(workers)
    ingest = PresenceIngest(fleet, workers=2)
    real = [beat(workers[i % 20], 1 + i // 20) for i in range(400)]
    bad = [forged(workers[i % 20], 1000 + i) for i in range(60)]
    replays = real[:30]
    try:
        # a first batch under load starts the helpers; the rest is checked by them
        for subject, data in real[:200] + bad[:30]:
            ingest.submit(subject, data)
        await settle(ingest, fleet, 230)
        await helpers_up(ingest)
        assert len(ingest.helpers) == 2
        for subject, data in real[200:] + bad[30:] + replays:
            ingest.submit(subject, data)
        await settle(ingest, fleet, 490)
        assert ingest.admitted == 400
        assert fleet.rejections["bad_signature"] == 60
        assert fleet.rejections["replayed"] == 30
        assert {e.worker_id for e in fleet.workers()} == {w.node_id for w in workers}
        assert all(e.presence.seq == 20 for e in fleet.workers())  # the newest heartbeat of each
    finally:
        await ingest.stop()


async def test_ingest_goes_on_when_a_helper_dies() -> None:
    workers = [Identity.generate("worker") for _ in range(8)]
    fleet = fleet_for(workers)
    ingest = PresenceIngest(fleet, workers=1)
    beats = [beat(workers[i % 8], 1 + i // 8) for i in range(6 * MIN_PARALLEL)]
    try:
        for subject, data in beats[: 2 * MIN_PARALLEL]:
            ingest.submit(subject, data)
        await settle(ingest, fleet, 2 * MIN_PARALLEL)
        await helpers_up(ingest)
        helper = ingest.helpers[0]
        assert helper._proc is not None
        helper._proc.kill()
        await helper._proc.wait()
        for subject, data in beats[2 * MIN_PARALLEL :]:
            ingest.submit(subject, data)
        await settle(ingest, fleet, len(beats))
        assert ingest.admitted == len(beats) and fleet.rejected == 0
    finally:
        await ingest.stop()


async def test_queue_is_bounded_and_drops_are_counted() -> None:
    w = Identity.generate("worker")
    fleet = fleet_for([w])
    ingest = PresenceIngest(fleet, workers=0, max_queue=10)
    payload = msgpack.packb({"x": 1})
    for _ in range(25):  # submitted without yielding: the ingest task cannot run in between
        ingest.submit(subjects.presence_subject("local", w.node_id), seal(w, payload, PURPOSE_PRESENCE))
    assert ingest.dropped == 15 and ingest.pending == 10
    await ingest.stop()


async def test_ingest_goes_on_when_a_helper_hangs() -> None:
    """A helper alive but not answering (stopped, swapped out) is killed after ``HELPER_TIMEOUT_S``: its
    batch is checked on the loop, new helpers start, and every heartbeat is still admitted."""
    import signal

    workers = [Identity.generate("worker") for _ in range(8)]
    fleet = fleet_for(workers)
    ingest = PresenceIngest(fleet, workers=1)
    beats = [beat(workers[i % 8], 1 + i // 8) for i in range(6 * MIN_PARALLEL)]
    pid = None
    try:
        for subject, data in beats[: 2 * MIN_PARALLEL]:
            ingest.submit(subject, data)
        await settle(ingest, fleet, 2 * MIN_PARALLEL)
        await helpers_up(ingest)
        assert ingest.helpers[0]._proc is not None
        pid = ingest.helpers[0]._proc.pid
        os.kill(pid, signal.SIGSTOP)
        for subject, data in beats[2 * MIN_PARALLEL :]:
            ingest.submit(subject, data)
        await settle(ingest, fleet, len(beats), timeout=HELPER_TIMEOUT_S + 20)
        assert ingest.admitted == len(beats) and fleet.rejected == 0
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await ingest.stop()


def forged_announcement(worker: Identity) -> tuple[str, bytes]:
    """A model announcement naming ``worker``'s (public) key with a random signature: free to send,
    a full signature check to refuse."""
    ann = ModelAnnouncement(worker_id=worker.node_id, model_id="m", version="1", region="local",
                            task="generate", state=ModelState.WARM, ts=time.time())
    body, _ = msgpack.unpackb(seal_message(worker, ann, PURPOSE_MODEL))
    return subjects.model_subject("m", "1", "local"), msgpack.packb([body, os.urandom(64)])


async def test_a_flood_of_forged_announcements_does_not_crowd_out_heartbeats() -> None:
    """Any worker user may publish on ``tether.models.>``: a flood there fills its own queue, while
    the fleet's heartbeats are queued apart and taken first."""
    attacker = Identity.generate("worker")
    honest = [Identity.generate("worker") for _ in range(5)]
    fleet = fleet_for([attacker, *honest])
    ingest = PresenceIngest(fleet, workers=0, max_queue=200)
    flood = [forged_announcement(attacker) for _ in range(400)]
    try:
        for subject, data in flood[:200]:  # the queue is full of the flood when the heartbeats come
            ingest.submit(subject, data)
        for w in honest:
            ingest.submit(*beat(w, 1))
        for subject, data in flood[200:]:  # ... and the flood goes on
            ingest.submit(subject, data)
        deadline = time.monotonic() + 30
        while ingest.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        seen = {e.worker_id for e in fleet.workers()}
        assert all(w.node_id in seen for w in honest), (ingest.dropped, dict(fleet.rejections))
        assert ingest.dropped == 200  # the flood's own overflow
    finally:
        await ingest.stop()
