"""Scheduler edge cases: full workers, the same job twice, lost acks, hand-back on close, breaker probes,
and a takeover during a job's last allowed attempt. Real nats-server, real SQLite, in-process roles."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import AttemptReport, ReportBatch
from services.scheduler.service import Scheduler
from tests.conftest import start_system
from tether import codec, subjects
from tether.errors import StoreError
from tether.settings import Settings
from tether.store import open_store

JOBS_SUBJECT = "tether.jobs.demo.echo.1"


async def _results(nc: Client) -> dict[str, list[dict[str, Any]]]:
    """Every final result seen on core NATS, per job (a duplicate final result would show up here)."""
    seen: dict[str, list[dict[str, Any]]] = {}

    async def cb(msg: Msg) -> None:
        body = json.loads(msg.data)
        seen.setdefault(body["jobId"], []).append(body)

    await nc.subscribe(subjects.RESULTS_ALL, cb=cb)
    await nc.flush()
    return seen


async def _until(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _hand_over_while_running(system: Any, settings: Settings) -> None:
    """Once the worker runs the job: its scheduler stops (handing it back) and another starts."""
    await _until(lambda: system.workers[0]._jobs and True, 10)
    await system.scheduler.close()
    system.scheduler = Scheduler(settings, scheduler_id="s-next")
    await system.scheduler.start()


async def _publish(nc: Client, job_id: str) -> None:
    await nc.jetstream().publish(JOBS_SUBJECT, json.dumps({"jobId": job_id, "input": job_id}).encode())


async def test_a_burst_over_worker_capacity_waits_for_room_instead_of_using_up_attempts(
    settings: Settings, nc: Client
) -> None:
    settings.worker_concurrency = 2
    settings.worker_max_queue = 2
    system = await start_system(settings, ["echo;delay_ms=700"])
    try:
        seen = await _results(nc)
        for i in range(6):
            await _publish(nc, f"burst-{i}")
        await _until(lambda: len(seen) == 6, 30)
        assert {k: [r["status"] for r in v] for k, v in seen.items()} == {
            f"burst-{i}": ["completed"] for i in range(6)
        }
    finally:
        await system.close()


async def test_the_same_job_delivered_twice_to_one_scheduler_runs_once(settings: Settings, nc: Client) -> None:
    system = await start_system(settings, ["echo;delay_ms=800"])
    try:
        seen = await _results(nc)
        await _publish(nc, "twice")  # a bare publish without Nats-Msg-Id: JetStream keeps both
        await _publish(nc, "twice")
        await _until(lambda: "twice" in seen, 10)
        await asyncio.sleep(0.5)
        worker = system.workers[0]
        assert worker.completed == 1  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10  # the final store write and the acks follow the result
        while True:
            attempts = await system.scheduler.store.attempts("twice")  # type: ignore[attr-defined]
            info = await nc.jetstream().consumer_info("JOBS", "schedulers")
            state = ([(a["attempt"], a["status"]) for a in attempts], info.num_ack_pending, info.num_pending)
            if state == ([(1, "COMPLETED")], 0, 0):  # run once; both deliveries acknowledged
                break
            assert time.monotonic() < deadline, state
            await asyncio.sleep(0.05)
    finally:
        await system.close()


async def test_a_lost_dispatch_ack_cancels_the_attempt_it_gives_up_on(settings: Settings, nc: Client) -> None:
    settings.dispatch_ack_s = 0.5
    system = await start_system(settings, ["echo;delay_ms=1500"])
    worker = system.workers[0]
    send_ack = worker.reporter.ack  # type: ignore[attr-defined]
    dropped: list[object] = []

    def drop_first(report_to: str, *ack: object) -> None:
        if not dropped:
            dropped.append(ack)
            # attempt 1 keeps its 0.5 s window (its wait has begun); a later attempt's ack is not dropped,
            # and on a slow machine it can take longer than 0.5 s: one late ack would be a second cancel
            settings.dispatch_ack_s = 30.0
            return
        send_ack(report_to, *ack)  # type: ignore[arg-type]

    worker.reporter.ack = drop_first  # type: ignore[attr-defined]
    cancels: list[dict[str, Any]] = []

    async def on_cancel(msg: Msg) -> None:
        cancels.append(json.loads(msg.data))

    await nc.subscribe(subjects.control_wildcard("cancel"), cb=on_cancel)
    try:
        seen = await _results(nc)
        await _publish(nc, "lost-ack")
        await _until(lambda: "lost-ack" in seen, 15)
        assert dropped, "the first ack was not dropped"
        assert [(c["jobId"], c["attempt"]) for c in cancels] == [("lost-ack", 1)]
        assert [r["status"] for r in seen["lost-ack"]] == ["completed"]
    finally:
        await system.close()


async def test_close_hands_held_jobs_back_at_once(settings: Settings, nc: Client) -> None:
    system = await start_system(settings, ["echo;delay_ms=5000"])
    scheduler = system.scheduler
    naked: list[str] = []
    real_nak = Msg.nak

    async def spy(self: Msg, delay: float | None = None) -> None:
        naked.append(self.subject)
        await real_nak(self, delay=delay)

    Msg.nak = spy  # type: ignore[method-assign]
    try:
        for i in range(3):
            await _publish(nc, f"held-{i}")
        await _until(lambda: len(scheduler.held) == 3, 10)  # type: ignore[attr-defined]
        await scheduler.close()  # type: ignore[attr-defined]
        assert len(naked) == 3
        now = time.time()
        async with open_store(settings.store_url) as store:
            rows = [await store.get(f"held-{i}") for i in range(3)]
        assert all(r is not None and float(r["lease_until"] or 0) <= now for r in rows)  # free to take over
    finally:
        Msg.nak = real_nak  # type: ignore[method-assign]
        system.scheduler = None
        await system.close()


async def test_a_failure_inside_a_half_open_probe_does_not_leave_the_breaker_shut(
    settings: Settings, nc: Client
) -> None:
    settings.breaker_open_s = 0.3
    system = await start_system(settings, ["echo;delay_ms=100"])
    scheduler = system.scheduler
    try:
        key = ("echo", "1", settings.region)
        for _ in range(settings.breaker_threshold):
            scheduler.breakers.failure(key, "synthetic")  # type: ignore[attr-defined]
        await asyncio.sleep(0.4)  # open -> half-open: the next attempt is the probe
        mark_running = scheduler.store.mark_running  # type: ignore[attr-defined]
        failed: list[bool] = []

        async def flaky(*args: Any, **kwargs: Any) -> None:
            if not failed:
                failed.append(True)
                raise StoreError("store briefly unavailable")
            await mark_running(*args, **kwargs)

        scheduler.store.mark_running = flaky  # type: ignore[attr-defined]
        seen = await _results(nc)
        await _publish(nc, "probe")
        await _until(lambda: bool(failed), 10)
        await asyncio.sleep(0.2)
        assert scheduler.breakers.allows(key)  # type: ignore[attr-defined]
        await _publish(nc, "after-probe")
        await _until(lambda: {"probe", "after-probe"} <= set(seen), 20)
        assert [r["status"] for r in seen["after-probe"]] == ["completed"]
    finally:
        await system.close()


async def test_a_takeover_during_the_last_attempt_waits_for_it_instead_of_dead_lettering(
    settings: Settings, nc: Client
) -> None:
    settings.job_lease_s = 2.0
    settings.max_attempts = 1
    system = await start_system(settings, ["echo;delay_ms=3000"])
    try:
        seen = await _results(nc)
        await _publish(nc, "last")
        await _hand_over_while_running(system, settings)  # its one attempt keeps running
        await _until(lambda: "last" in seen, 15)
        await asyncio.sleep(1.0)
        assert [r["status"] for r in seen["last"]] == ["completed"]
        stored = await nc.jetstream().get_last_msg("RESULTS", subjects.result_subject("last"))
        assert json.loads(stored.data)["status"] == "completed"
    finally:
        await system.close()


async def test_max_deliveries_does_not_dead_letter_a_job_whose_attempt_is_still_running(
    settings: Settings, nc: Client
) -> None:
    settings.max_deliver = 1  # the hand-back on close is its last delivery
    settings.exec_timeout_base_s, settings.exec_timeout_per_token_s = 3.0, 0.0
    system = await start_system(settings, ["echo;delay_ms=1500"])
    other = Scheduler(settings, scheduler_id="s-other")
    try:
        seen = await _results(nc)
        await _publish(nc, "adv")
        await _until(lambda: "adv" in system.scheduler.held, 10)  # type: ignore[attr-defined]
        await other.start()  # hears the max-deliveries advisory once the first hands the job back
        await system.scheduler.close()  # type: ignore[attr-defined]
        system.scheduler = other
        await _until(lambda: "adv" in seen, 15)
        await asyncio.sleep(settings.dispatch_ack_s + 3.0 + 1.5)  # past the attempt's expiry and the re-check
        assert [r["status"] for r in seen["adv"]] == ["completed"]
        dlq = await nc.jetstream().stream_info("DLQ")
        assert dlq.state.messages == 0
        async with open_store(settings.store_url) as store:
            row = await store.get("adv")
        assert row is not None and row["status"] == "COMPLETED"
    finally:
        await system.close()
        await other.close()  # a no-op once the system closed it; not, when the test failed before the swap


async def test_reports_not_from_the_attempts_worker_are_dropped(settings: Settings, nc: Client) -> None:
    """A worker can speak only for its own attempts: the sender is its subject token (NATS permissions
    bind it to the worker's user), and it must be the worker the attempt was dispatched to."""
    system = await start_system(settings, ["echo;delay_ms=1500"])
    try:
        seen = await _results(nc)
        sched = system.scheduler
        real = system.workers[0].worker_id  # type: ignore[attr-defined]
        await _publish(nc, "fr")
        await _until(lambda: ("fr", 1) in sched.dispatcher._watches, 10)  # type: ignore[attr-defined]
        report_to = sched.dispatcher.report_to  # type: ignore[attr-defined]
        now = time.time()

        def forged(worker_id: str) -> bytes:
            report = AttemptReport(
                job_id="fr", attempt=1, worker_id=worker_id, ok=True, started_at=now, finished_at=now
            )
            return codec.encode(ReportBatch(worker_id=worker_id, reports=[report]).wire(), codec.MSGPACK)

        msgpack_headers = {codec.CONTENT_TYPE: codec.MSGPACK}
        # another worker, in its own name, for an attempt that is not its own
        await nc.publish(subjects.worker_report_subject(report_to, "w-intruder"), forged("w-intruder"),
                         headers=msgpack_headers)  # fmt: skip
        # another worker, in the real worker's name
        await nc.publish(subjects.worker_report_subject(report_to, "w-intruder"), forged(real),
                         headers=msgpack_headers)  # fmt: skip
        await _until(lambda: sched.dispatcher.forged == 2, 5)  # type: ignore[attr-defined]
        row = await sched.store.get("fr")  # type: ignore[attr-defined]
        assert row is not None and row["status"] != "COMPLETED"  # still running on the real worker
        assert ("fr", 1) in sched.dispatcher._watches  # type: ignore[attr-defined]
        await _until(lambda: "fr" in seen, 10)
        await _until(lambda: ("fr", 1) not in sched.dispatcher._watches, 5)  # type: ignore[attr-defined]
        row = await sched.store.get("fr")  # type: ignore[attr-defined]
        assert row is not None and row["status"] == "COMPLETED" and row["worker_id"] == real
    finally:
        await system.close()


async def test_a_job_taken_over_from_a_stopped_scheduler_runs_once(settings: Settings, nc: Client) -> None:
    """Its attempt keeps running on a live worker: the next scheduler waits for that attempt's result
    instead of starting a second run (two finals on core NATS, twice the compute)."""
    settings.job_lease_s = 2.0
    system = await start_system(settings, ["echo;delay_ms=3000"])
    try:
        seen = await _results(nc)
        await _publish(nc, "once")
        worker = system.workers[0]
        await _hand_over_while_running(system, settings)  # hands the job back at once
        await _until(lambda: "once" in seen, 20)
        await asyncio.sleep(2.5)  # a second run would have finished by now
        assert [r["status"] for r in seen["once"]] == ["completed"]
        assert worker.completed == 1  # type: ignore[attr-defined]
    finally:
        await system.close()


async def test_a_job_whose_worker_died_after_a_long_run_waits_its_full_queue_wait(
    settings: Settings, nc: Client
) -> None:
    settings.queue_wait_s = 3.0
    system = await start_system(settings, ["echo;delay_ms=5000"])
    try:
        seen = await _results(nc)
        await _publish(nc, "long")
        await asyncio.sleep(4.0)  # longer than queue_wait_s into its run ...
        await system.workers[0].nc.close()  # type: ignore[attr-defined]  # ... its only worker is gone
        died = time.monotonic()
        await _until(lambda: "long" in seen, 30)
        waited = time.monotonic() - died
        [final] = seen["long"]
        assert final["status"] == "failed" and final["error"]["code"] == "no_capacity", final
        assert final["attempts"] == 1
        # OFFLINE after 3T (1.5 s), then the full 3 s wait for another worker: not at once
        assert waited >= 3.0, waited
    finally:
        system.workers = []
        await system.close()


async def test_a_nats_msg_id_too_long_for_a_subject_gets_an_error_and_harms_no_connection(
    settings: Settings, nc: Client
) -> None:
    system = await start_system(settings, ["echo"])
    try:
        seen = await _results(nc)
        ack = await nc.jetstream().publish(
            JOBS_SUBJECT, b'{"input": "x"}', headers={"Nats-Msg-Id": "x." * 1500}
        )
        generated = lambda: [k for k in seen if k.startswith(f"job-{ack.seq}-")]  # noqa: E731
        await _until(lambda: bool(generated()), 10)
        [final] = seen[generated()[0]]
        assert final["error"]["code"] == "invalid_request" and final["error"]["field"] == "Nats-Msg-Id"
        await _publish(nc, "after")  # the scheduler's and worker's connections are still up
        await _until(lambda: "after" in seen, 10)
        assert seen["after"][0]["status"] == "completed"
        assert not system.scheduler.nc.is_closed and not system.workers[0].nc.is_closed  # type: ignore[attr-defined]
    finally:
        await system.close()


async def test_jobs_that_outrun_their_own_short_deadline_do_not_open_the_models_breaker(
    settings: Settings, nc: Client
) -> None:
    """One tenant's tight ``timeoutS`` on a slow model: its jobs end as ``timeout`` after one attempt (the
    deadline is spent), and the model's breaker stays closed for everyone else."""
    from tether import client
    from tether.errors import TetherError

    system = await start_system(settings, ["echo;delay_ms=400"])
    try:
        scheduler: Any = system.scheduler
        job_ids = []
        for i in range(settings.breaker_threshold + 2):
            try:
                await client.infer(nc, model="echo", input=f"t{i}", timeout=20, params={"timeoutS": 0.05})
                raise AssertionError("a 400 ms job finished within 50 ms")
            except TetherError as exc:
                assert exc.code == "timeout" and exc.job_id, exc
                job_ids.append(exc.job_id)
        deadline = time.monotonic() + 10
        while scheduler.stats["failed"] < settings.breaker_threshold + 2:  # every final timeout recorded
            assert time.monotonic() < deadline, scheduler.stats
            await asyncio.sleep(0.05)
        assert scheduler.breakers.allows(("echo", "1", settings.region))
        for job_id in job_ids:  # its deadline was spent: not retried after the timeout
            codes = [a["error_code"] for a in await scheduler.store.attempts(job_id)]
            assert codes.count("timeout") == 1 and codes[-1] == "timeout", (job_id, codes)
        patient = await client.infer(nc, model="echo", input="patient", timeout=20)
        assert patient["result"] == "patient"
    finally:
        await system.close()
