"""A worker's jobs around cancels, drains and stops, driven by signed dispatches from a test scheduler.

A cancel stops every runtime's job (not only the generation engine's), also one that overtook its
dispatch; a drain order's grace is made sane and a drain that fails midway still stops the worker;
a job accepted as the worker closes is reported handed back, never left without a report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgpack
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import AttemptReport, Dispatch, DispatchBatch, ReportBatch
from services.worker.draining import DEFAULT_DRAIN_GRACE_S, grace_of
from services.worker.runtimes.catalog import parse_model_spec
from services.worker.service import Worker, WorkerState
from tether import codec, subjects
from tether.dispatch_auth import DispatchSigner
from tether.identity import Identity
from tether.security import ensure_dev_trust
from tether.settings import Settings
from tether.signed import ENVELOPE

REPORT_TO = "tether.reports.s-test"


class Harness:
    def __init__(self, worker: Worker, nc: Client, signer: DispatchSigner) -> None:
        self.worker, self.nc, self.signer = worker, nc, signer
        self.reports: list[AttemptReport] = []
        self.results: list[dict[str, object]] = []

    async def start(self) -> None:
        async def on_report(msg: Msg) -> None:
            self.reports += ReportBatch.model_validate(msgpack.unpackb(msg.data)).reports

        async def on_result(msg: Msg) -> None:
            if not msg.subject.endswith(".chunks"):
                self.results.append(codec.decode(msg.data, codec.content_type_of(msg.headers)))

        await self.nc.subscribe(f"{REPORT_TO}.*", cb=on_report)
        await self.nc.subscribe(subjects.RESULTS_ALL, cb=on_result)
        await self.nc.flush()

    async def send(self, job_id: str) -> None:
        data = await self.sealed(job_id)
        await self.nc.publish(subjects.dispatch_subject(self.worker.worker_id), data, headers={"Content-Type": ENVELOPE})
        await self.nc.flush()

    async def sealed(self, job_id: str) -> bytes:
        d = Dispatch(
            job_id=job_id, attempt=1, retry_token=f"{job_id}#1", tenant_id="demo", model_id="echo",
            version="1", input="hi", report_to=REPORT_TO, scheduler_id="s-test", deadline=time.time() + 30,
        )
        body = codec.encode(DispatchBatch(scheduler_id="s-test", report_to=REPORT_TO, items=[d]).wire(), codec.MSGPACK)
        return self.signer.seal(self.worker.worker_id, body)

    async def cancel(self, job_id: str, **body: object) -> None:
        await self.nc.publish(subjects.control_subject("cancel", job_id), codec.encode({"jobId": job_id, **body}))
        await self.nc.flush()

    async def report_of(self, job_id: str, timeout: float = 5.0) -> AttemptReport:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.reports if r.job_id == job_id]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no report for {job_id}: {self.reports}"
            await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def harness(settings: Settings, nc: Client) -> AsyncIterator[Harness]:
    key = next(i for i in ensure_dev_trust(settings) if i.role == "worker")
    worker = Worker(settings, identity=key, specs=[parse_model_spec("echo;delay_ms=400")])
    await worker.start()
    await worker.wait_ready()
    h = Harness(worker, nc, DispatchSigner(Identity.load(settings.keys_dir / "scheduler.key")))
    await h.start()
    try:
        yield h
    finally:
        await h.worker.close()


async def test_a_cancel_stops_an_echo_job_before_and_while_it_runs(harness: Harness) -> None:
    await harness.cancel("j-early", attempt=1, reason="the scheduler gave up on attempt 1")
    await asyncio.sleep(0.1)
    await harness.send("j-early")  # the cancel overtook its dispatch
    await harness.send("j-late")
    await asyncio.sleep(0.1)
    await harness.cancel("j-late", reason="the client went away")  # while it runs
    for job in ("j-early", "j-late"):
        report = await harness.report_of(job)
        assert not report.ok and report.error is not None and report.error.code == "cancelled", report
    await asyncio.sleep(0.6)  # past the run: nothing is published for either
    assert harness.results == []


async def test_a_drain_that_fails_midway_still_stops_the_worker(harness: Harness) -> None:
    async def broken_wait(timeout: float | None = None) -> bool:  # as uvloop's wait did with a NaN grace
        raise ValueError("cannot convert float NaN to integer")

    harness.worker._jobs.wait = broken_wait  # type: ignore[method-assign]
    with pytest.raises(ValueError):
        await harness.worker.drain(1.0)
    assert harness.worker.state is WorkerState.STOPPED and harness.worker.stopped.is_set()


def test_a_drain_order_grace_is_made_sane() -> None:
    def order(body: bytes) -> Msg:
        return Msg(_client=None, subject="tether.control.drain.w", data=body)  # type: ignore[arg-type]

    assert grace_of(order(b'{"graceS": NaN}')) == DEFAULT_DRAIN_GRACE_S
    assert grace_of(order(b'{"graceS": Infinity}')) == DEFAULT_DRAIN_GRACE_S
    assert grace_of(order(b'{"graceS": -5}')) == 0.0
    assert grace_of(order(b'{"graceS": 2.5}')) == 2.5
    assert grace_of(order(b"")) == DEFAULT_DRAIN_GRACE_S


async def test_a_job_accepted_as_the_worker_closes_is_reported_handed_back(harness: Harness) -> None:
    worker = harness.worker
    data = await harness.sealed("j-x")
    worker._on_dispatch(Msg(_client=None, subject="d", data=data))  # type: ignore[arg-type]
    await worker.close()  # in the same loop turn: the job's task never took a step
    report = await harness.report_of("j-x")
    assert not report.ok and report.error is not None and "handed back" in report.error.message


async def test_evict_unloads_a_warm_model_that_then_loads_again_on_demand(harness: Harness) -> None:
    from schemas import ModelState
    from tether.control_cli import order

    worker, key = harness.worker, ("echo", "1")
    [answer] = await order(harness.nc, "evict", worker.worker_id, {"modelId": "echo"})
    assert answer == {"workerId": worker.worker_id, "evicted": True, "modelId": "echo", "version": "1"}
    assert worker.cache.get(key).state is ModelState.EVICTED  # type: ignore[union-attr]

    await harness.send("j-after-evict")  # still served: it loads again for the job
    assert (await harness.report_of("j-after-evict")).ok
    assert worker.cache.get(key).state is ModelState.WARM  # type: ignore[union-attr]

    await harness.send("j-busy")
    while not worker.cache.get(key).inflight:  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
    answers = await order(harness.nc, "evict", "all", {"modelId": "echo", "version": "1"})
    assert [(a["evicted"], "running" in a["reason"]) for a in answers] == [(False, True)], answers
    assert (await harness.report_of("j-busy")).ok  # the job it was running is untouched

    [unknown] = await order(harness.nc, "evict", worker.worker_id, {"modelId": "nope"})
    assert unknown["evicted"] is False and "does not serve" in unknown["reason"]
    [malformed] = await order(harness.nc, "evict", worker.worker_id, {"version": "1"})
    assert malformed["evicted"] is False and "modelId" in malformed["reason"]
