"""Scheduler operations against a real nats-server and SQLite: health events, drain over NATS,
the max-deliveries dead-letter path, `tether dlq`, and reliability kept across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas import ModelState, Presence, ServedModel
from services.scheduler.service import Scheduler
from streams import ADVISORIES, JOBS, MAX_DELIVERIES_SUBJECT, SCHEDULER_CONSUMER
from tests.conftest import start_system
from tests.proc_helpers import run_tether, tether_env
from tether import client, codec, dlq, subjects
from tether.envelope import PURPOSE_PRESENCE
from tether.security import ensure_dev_trust
from tether.settings import Settings
from tether.signed import envelope_headers, seal_message


async def _collect(nc: Client, subject: str) -> tuple[list[dict], object]:
    seen: list[dict] = []

    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append({"subject": msg.subject, **json.loads(msg.data)})

    sub = await nc.subscribe(subject, cb=cb)
    await nc.flush()
    return seen, sub


async def _until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


async def test_worker_health_transitions_are_published_as_events(settings: Settings, nc: Client) -> None:
    events, _ = await _collect(nc, "tether.events.worker.>")
    worker = ensure_dev_trust(settings)[0]  # an allowlisted worker key that never beats again
    sched = Scheduler(settings, scheduler_id="s-events")
    await sched.start()
    try:
        ghost = Presence(
            worker_id=worker.node_id,
            region="local",
            device_class="cpu",
            capacity=1,
            queue_depth=0,
            models=[ServedModel(model_id="echo", version="1", task="echo", state=ModelState.WARM)],
            heartbeat_s=settings.heartbeat_s,
            started_at=time.time(),
            seq=1,
            ts=time.time(),
        )
        t0 = time.monotonic()
        await nc.publish(
            subjects.presence_subject("local", worker.node_id),
            seal_message(worker, ghost, PURPOSE_PRESENCE),
            headers=envelope_headers(),
        )
        await _until(lambda: any(e["state"] == "OFFLINE" for e in events), 10, "OFFLINE event")
        elapsed = time.monotonic() - t0
        states = [e["state"] for e in events if e["workerId"] == worker.node_id]
        assert states == ["HEALTHY", "SUSPECT", "OFFLINE"], events
        assert [e["subject"] for e in events][-2:] == ["tether.events.worker.suspect", "tether.events.worker.offline"]
        hb = settings.heartbeat_s
        assert 3 * hb <= elapsed <= 3 * hb + 2.0, elapsed  # OFFLINE after 3T, not much later
    finally:
        await sched.close()


async def test_drain_over_nats_stops_the_worker_and_placements_move_at_once(
    settings: Settings, nc: Client
) -> None:
    system = await start_system(settings, ["echo"], workers=2)
    try:
        events, _ = await _collect(nc, "tether.events.worker.drained")
        w0, w1 = (w.worker_id for w in system.workers)  # type: ignore[attr-defined]
        reply = await nc.request(subjects.control_subject("drain", w0), codec.encode({"graceS": 5}), timeout=5)
        assert json.loads(reply.data) == {"workerId": w0, "draining": True, "inflight": 0}
        await asyncio.wait_for(system.workers[0].stopped.wait(), timeout=10)  # type: ignore[attr-defined]
        await _until(lambda: bool(events), 5, "drained event")
        assert events[0]["workerId"] == w0
        replies = await asyncio.gather(
            *(client.infer(nc, model="echo", input=f"after drain {i}", timeout=20) for i in range(20))
        )
        assert {r["workerId"] for r in replies} == {w1}
        assert all(r["result"] == f"after drain {i}" for i, r in enumerate(replies))
    finally:
        await system.close()


async def test_max_deliveries_advisory_dead_letters_the_job_and_dlq_cli_retries_it(
    settings: Settings, nc: Client
) -> None:
    js = nc.jetstream()
    await _exhaust_deliveries(nc, settings, "j-capped")
    sub = await nc.subscribe(subjects.result_subject("j-capped"))
    system = await start_system(settings, ["echo"])
    try:
        msg = await sub.next_msg(timeout=30)
        result = json.loads(msg.data)
        assert result["status"] == "dead_lettered" and result["error"]["code"] == "dead_lettered", result
        assert "max deliveries" in result["error"]["message"]
        entry = await dlq.find(js, "j-capped")
        assert entry is not None and entry["submission"]["input"] == "x"
        row = await system.scheduler.store.get("j-capped")  # type: ignore[attr-defined]
        assert row is not None and row["status"] == "DEAD_LETTERED"
        # removed from the work queue (right after the final result is published)
        await _until_async(lambda: _stored(js, JOBS, 0), 5, "the job removed from JOBS")

        env = tether_env(settings.home, url=settings.url, COLUMNS="200")
        r = await asyncio.to_thread(run_tether, "dlq", "list", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert [e["jobId"] for e in json.loads(r.stdout)] == ["j-capped"]
        r = await asyncio.to_thread(run_tether, "dlq", "show", "j-capped", env=env)
        assert r.returncode == 0 and json.loads(r.stdout)["error"]["code"] == "dead_lettered", r.stderr
        r = await asyncio.to_thread(run_tether, "dlq", "show", "nope", env=env)
        assert r.returncode == 1 and "not in the DLQ" in r.stderr

        # a worker is back: the retried job (a new job id) completes
        system2 = await start_system(settings, ["echo"])
        try:
            r = await asyncio.to_thread(run_tether, "dlq", "retry", "j-capped", "--json", env=env)
            assert r.returncode == 0, r.stderr
            new_id = json.loads(r.stdout)["retriedAs"]
            assert new_id.startswith("j-capped-r1-")
            retried = await nc.subscribe(subjects.result_subject(new_id))
            fetched = None
            for _ in range(100):
                from tether.results import fetch_final

                fetched = await fetch_final(js, new_id)
                if fetched is not None:
                    break
                await asyncio.sleep(0.1)
            await retried.unsubscribe()
            assert fetched is not None and fetched.status == "completed" and fetched.result == "x"
            # retried again within the same second: another job, not one JOBS deduplicates away
            r = await asyncio.to_thread(run_tether, "dlq", "retry", "j-capped", "--json", env=env)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["retriedAs"] not in (new_id, "j-capped")
        finally:
            await system2.close()
    finally:
        await system.close()


async def test_a_max_deliveries_notice_sent_while_no_scheduler_listens_still_dead_letters_the_job(
    settings: Settings, nc: Client
) -> None:
    """The notice is kept in ADVISORIES: a job JetStream gave up on while every scheduler was away is not lost."""
    js = nc.jetstream()
    await _exhaust_deliveries(nc, settings, "j-orphan")
    await _until_async(lambda: _stored(js, ADVISORIES), 5, "the notice kept in ADVISORIES")
    sub = await nc.subscribe(subjects.result_subject("j-orphan"))
    system = await start_system(settings, ["echo"])  # schedulers come back only now
    try:
        result = json.loads((await sub.next_msg(timeout=20)).data)
        assert result["status"] == "dead_lettered" and "max deliveries" in result["error"]["message"], result
        assert (await dlq.find(js, "j-orphan")) is not None
        await _until_async(lambda: _stored(js, JOBS, 0), 5, "the job removed from JOBS")
        await _until_async(lambda: _stored(js, ADVISORIES, 0), 5, "the notice acked")
    finally:
        await system.close()


async def _exhaust_deliveries(nc: Client, settings: Settings, job_id: str) -> None:
    """Publish ``job_id`` and have it delivered ``max_deliver`` times to a scheduler that dies on it each
    time, while no real scheduler runs: JetStream then gives up on it and sends its max-deliveries notice."""
    settings.max_deliver = 2
    first = Scheduler(settings, scheduler_id="s-setup")  # declares the streams and the capped consumer
    await first.start()
    await first.close()
    js = nc.jetstream()
    await js.publish("tether.jobs.demo.echo.1", json.dumps({"jobId": job_id, "input": "x"}).encode())
    crashing = await js.pull_subscribe_bind(durable=SCHEDULER_CONSUMER, stream=JOBS)
    for _ in range(settings.max_deliver):
        (msg,) = await crashing.fetch(1, timeout=5)
        await msg.nak()
    with contextlib.suppress(nats.errors.TimeoutError):  # no further delivery: JetStream gives up here
        await crashing.fetch(1, timeout=1)
    await crashing.unsubscribe()


async def _stored(js: JetStreamContext, stream: str, n: int = 1) -> bool:
    return (await js.stream_info(stream)).state.messages == n


async def _until_async(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


async def test_reliability_and_placement_explanation_survive_a_scheduler_restart(
    settings: Settings, nc: Client
) -> None:
    system = await start_system(settings, ["echo"])
    try:
        reply = {}
        for i in range(5):
            reply = await client.infer(nc, model="echo", input=f"r{i}", timeout=20)
        row = await system.scheduler.store.get(reply["jobId"])  # type: ignore[attr-defined]
        assert row["placement"]["worker"] == reply["workerId"] and row["placement"]["terms"]["warm"] == 1.0
        await system.scheduler.close()  # type: ignore[attr-defined]  # reports arrive after replies
        wid = system.workers[0].worker_id  # type: ignore[attr-defined]
        before = system.scheduler.reliability.score(wid)  # type: ignore[attr-defined]
        assert before > 0.8  # five successes
        fresh = Scheduler(settings, scheduler_id="s-test-2")
        await fresh.start()
        try:
            assert abs(fresh.reliability.score(wid) - before) < 0.01
        finally:
            await fresh.close()
    finally:
        await system.close()


async def test_roles_start_beside_a_stream_that_already_keeps_advisories_and_notices_still_dead_letter(
    settings: Settings, nc: Client
) -> None:
    """An operator's audit stream of ``$JS.EVENT.>`` overlaps ADVISORIES: every role still starts, and the
    scheduler handles the notices it hears on core NATS."""
    js = nc.jetstream()
    await js.add_stream(name="AUDIT", subjects=["$JS.EVENT.>"])
    await _exhaust_deliveries(nc, settings, "j-audit")  # its notice lands in AUDIT
    notice = await js.get_last_msg("AUDIT", MAX_DELIVERIES_SUBJECT)
    sub = await nc.subscribe(subjects.result_subject("j-audit"))
    system = await start_system(settings, ["echo"])
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.stream_info(ADVISORIES)
            raise AssertionError("ADVISORIES was created over the audit stream's subjects")
        await nc.publish(MAX_DELIVERIES_SUBJECT, notice.data)  # as nats-server sends it to a listening scheduler
        result = json.loads((await sub.next_msg(timeout=20)).data)
        assert result["status"] == "dead_lettered" and "max deliveries" in result["error"]["message"], result
        await _until_async(lambda: _stored(js, JOBS, 0), 5, "the job removed from JOBS")
    finally:
        await system.close()


async def test_a_notice_is_ignored_once_its_sequence_names_a_newer_job_and_handling_twice_is_quiet(
    settings: Settings, nc: Client
) -> None:
    sched = Scheduler(settings, scheduler_id="s-notices")
    await sched.start()
    js = nc.jetstream()
    try:
        advisories = sched._advisories
        assert advisories is not None
        ack = await js.publish("tether.jobs.demo.echo.1", json.dumps({"jobId": "j-new", "input": "x"}).encode())
        # a notice from before JOBS was recreated, naming the same sequence
        assert await advisories.dead_letter(ack.seq, 3, noticed_at=time.time() - 60) is None
        assert (await js.stream_info(JOBS)).state.messages == 1  # the new job is left alone
        assert await dlq.find(js, "j-new") is None
        # the same (current) notice handled by two schedulers at once: both finish, no error
        outcomes = await asyncio.gather(
            advisories.dead_letter(ack.seq, 3, noticed_at=time.time()),
            advisories.dead_letter(ack.seq, 3, noticed_at=time.time()),
        )
        assert outcomes == [None, None]
        assert (await js.stream_info(JOBS)).state.messages == 0
        assert await dlq.find(js, "j-new") is not None
    finally:
        await sched.close()
