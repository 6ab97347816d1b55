"""Signed assignments: a worker runs only dispatches signed by a trusted scheduler key, for itself, once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgpack
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import Dispatch, DispatchBatch, ReportBatch
from tests.conftest import System, start_system
from tether import client, codec, subjects
from tether.dispatch_auth import DispatchSigner
from tether.envelope import VERSION_PAIRWISE, open_envelope
from tether.identity import Identity
from tether.settings import Settings
from tether.signed import ENVELOPE


def batch(job_id: str, report_to: str) -> bytes:
    d = Dispatch(
        job_id=job_id,
        attempt=1,
        retry_token=f"{job_id}#1",
        tenant_id="demo",
        model_id="echo",
        version="1",
        input="run me",
        report_to=report_to,
        scheduler_id="s-rogue",
        deadline=time.time() + 30,
    )
    return codec.encode(
        DispatchBatch(scheduler_id="s-rogue", report_to=report_to, items=[d]).wire(), codec.MSGPACK
    )


class Probe:
    """Publishes onto a worker's dispatch subject and watches its report subject and RESULTS."""

    def __init__(self, nc: Client, system: System) -> None:
        self.nc, self.worker = nc, system.workers[0]
        self.subject = subjects.dispatch_subject(self.worker.worker_id)  # type: ignore[attr-defined]
        self.report_to = "tether.reports.s-probe"
        self.reports: list[Msg] = []
        self.results: list[Msg] = []

    async def start(self) -> None:
        async def on_report(msg: Msg) -> None:
            self.reports.append(msg)

        async def on_result(msg: Msg) -> None:
            self.results.append(msg)

        await self.nc.subscribe(f"{self.report_to}.*", cb=on_report)  # the worker appends its id
        await self.nc.subscribe(subjects.RESULTS_ALL, cb=on_result)
        await self.nc.flush()

    @property
    def rejections(self) -> dict[str, int]:
        return dict(self.worker.dispatch_gate.verifier.rejections)  # type: ignore[attr-defined]

    async def refused(self, data: bytes, reason: str) -> None:
        before = self.rejections.get(reason, 0)
        completed = self.worker.completed  # type: ignore[attr-defined]
        await self.nc.publish(self.subject, data, headers={"Content-Type": ENVELOPE})
        await self.nc.flush()
        deadline = time.monotonic() + 5
        while self.rejections.get(reason, 0) != before + 1:
            assert time.monotonic() < deadline, self.rejections
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # a job that ran anyway would have reported and published by now
        assert self.reports == [] and self.results == []
        assert self.worker.completed == completed  # type: ignore[attr-defined]

    def finished_reports(self) -> int:
        batches = [ReportBatch.model_validate(msgpack.unpackb(m.data)) for m in self.reports]
        return sum(len(b.reports) for b in batches)

    async def accepted(self, data: bytes) -> None:
        """Runs: its result is published and its final report has come back."""
        await self.nc.publish(self.subject, data, headers={"Content-Type": ENVELOPE})
        deadline = time.monotonic() + 5
        while not (self.results and self.finished_reports()):
            assert time.monotonic() < deadline, self.rejections
            await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def probe(settings: Settings, nc: Client) -> AsyncIterator[Probe]:
    system = await start_system(settings, ["echo"])
    try:
        p = Probe(nc, system)
        await p.start()
        yield p
    finally:
        await system.close()


async def test_forged_assignment_refused(probe: Probe) -> None:
    rogue = DispatchSigner(Identity.generate("scheduler"))
    await probe.refused(rogue.seal(probe.worker.worker_id, batch("j-forged", probe.report_to)), "unknown_key")  # type: ignore[attr-defined]


async def test_unsigned_assignment_refused(probe: Probe) -> None:
    await probe.refused(batch("j-unsigned", probe.report_to), "malformed")


async def test_assignment_for_another_worker_refused(probe: Probe, settings: Settings) -> None:
    trusted = DispatchSigner(Identity.load(settings.keys_dir / "scheduler.key"))
    other = Identity.generate("worker").node_id
    await probe.refused(trusted.seal(other, batch("j-other", probe.report_to)), "wrong_purpose")


async def test_assignment_with_a_bad_signature_refused(probe: Probe, settings: Settings) -> None:
    trusted = DispatchSigner(Identity.load(settings.keys_dir / "scheduler.key"))
    body, sig = msgpack.unpackb(trusted.seal(probe.worker.worker_id, batch("j-bad", probe.report_to)))  # type: ignore[attr-defined]
    await probe.refused(msgpack.packb([body, bytes([sig[0] ^ 1]) + sig[1:]]), "bad_signature")


async def test_trusted_assignment_runs_once_and_its_replay_is_refused(
    probe: Probe, settings: Settings
) -> None:
    trusted = DispatchSigner(Identity.load(settings.keys_dir / "scheduler.key"))
    data = trusted.seal(probe.worker.worker_id, batch("j-trusted", probe.report_to))  # type: ignore[attr-defined]
    await probe.accepted(data)
    assert probe.results[0].subject == subjects.result_subject("j-trusted")
    probe.reports.clear()
    probe.results.clear()
    await probe.refused(data, "replayed")


async def test_a_dispatch_captured_before_a_restart_is_refused_by_the_new_process(
    probe: Probe, settings: Settings
) -> None:
    """The nonce cache lives in memory; a restarted worker refuses what was sealed before it started."""
    from services.worker.runtimes.catalog import parse_model_spec
    from services.worker.service import Worker

    trusted = DispatchSigner(Identity.load(settings.keys_dir / "scheduler.key"))
    old = probe.worker
    data = trusted.seal(old.worker_id, batch("j-captured", probe.report_to))  # type: ignore[attr-defined]
    await probe.accepted(data)
    await old.close()  # type: ignore[attr-defined]
    from tether.dispatch_auth import NOT_BEFORE_MARGIN_S

    await asyncio.sleep(NOT_BEFORE_MARGIN_S + 0.1)  # a real restart takes longer than the clock margin
    again = Worker(settings, identity=old.identity, specs=[parse_model_spec("echo")])  # type: ignore[attr-defined]
    await again.start()
    try:
        await again.wait_ready()
        probe.worker = again
        probe.reports.clear()
        probe.results.clear()
        await probe.refused(data, "stale")
    finally:
        await again.close()


# ---- pairwise-tagged dispatches (the scheduler's usual seal: tether.pairwise) ----------------------


def _trusted(settings: Settings) -> DispatchSigner:
    return DispatchSigner(Identity.load(settings.keys_dir / "scheduler.key"))


def _worker_key(probe: Probe) -> bytes:
    return probe.worker.identity.public_key  # type: ignore[attr-defined,no-any-return]


async def test_the_scheduler_tags_each_dispatch_for_its_worker(probe: Probe, nc: Client) -> None:
    seen: list[Msg] = []

    async def on_dispatch(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe(probe.subject, cb=on_dispatch)
    await nc.flush()
    reply = await client.infer(nc, model="echo", input="tagged")
    assert reply["result"] == "tagged"
    assert seen, "no dispatch seen"
    env = open_envelope(seen[0].data)
    assert env.version == VERSION_PAIRWISE and env.purpose == f"dispatch.{probe.worker.worker_id}"  # type: ignore[attr-defined]
    assert probe.rejections == {}


async def test_a_trusted_pairwise_assignment_runs_once_and_its_replay_is_refused(
    probe: Probe, settings: Settings
) -> None:
    data = _trusted(settings).seal(probe.worker.worker_id, batch("j-pair", probe.report_to), _worker_key(probe))  # type: ignore[attr-defined]
    assert open_envelope(data).version == VERSION_PAIRWISE
    await probe.accepted(data)
    probe.reports.clear()
    probe.results.clear()
    await probe.refused(data, "replayed")


async def test_a_pairwise_tag_under_another_workers_key_is_refused(probe: Probe, settings: Settings) -> None:
    """Sealed for this worker's purpose, but tagged with the key shared with someone else."""
    other = Identity.generate("worker").public_key
    data = _trusted(settings).seal(probe.worker.worker_id, batch("j-wrong-key", probe.report_to), other)  # type: ignore[attr-defined]
    await probe.refused(data, "bad_signature")


async def test_a_tampered_pairwise_assignment_is_refused(probe: Probe, settings: Settings) -> None:
    data = _trusted(settings).seal(probe.worker.worker_id, batch("j-tampered", probe.report_to), _worker_key(probe))  # type: ignore[attr-defined]
    body, tag = msgpack.unpackb(data)
    await probe.refused(msgpack.packb([body, bytes([tag[0] ^ 1]) + tag[1:]]), "bad_signature")


async def test_a_pairwise_assignment_from_an_untrusted_scheduler_is_refused(probe: Probe) -> None:
    rogue = DispatchSigner(Identity.generate("scheduler"))  # it can derive a key with the worker, but is not allowed
    data = rogue.seal(probe.worker.worker_id, batch("j-rogue-pair", probe.report_to), _worker_key(probe))  # type: ignore[attr-defined]
    await probe.refused(data, "unknown_key")
