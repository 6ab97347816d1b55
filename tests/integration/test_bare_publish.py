"""A bare publish into JOBS (what `nats pub` does) and replay from RESULTS."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from streams import RESULTS
from tether import subjects


async def _next_result(nc: Client, job_id: str, publish) -> dict:
    """Subscribe to the job's result subject, publish, return the first result."""
    sub = await nc.subscribe(subjects.result_subject(job_id))
    await publish()
    msg = await sub.next_msg(timeout=15)
    await sub.unsubscribe()
    return json.loads(msg.data)


async def test_bare_publish_with_job_id_produces_a_replayable_result(echo_system, nc: Client) -> None:
    js = nc.jetstream()

    async def publish() -> None:
        await js.publish("tether.jobs.demo.echo.1", json.dumps({"jobId": "j-1", "input": "hello"}).encode())

    result = await _next_result(nc, "j-1", publish)
    assert result["jobId"] == "j-1" and result["status"] == "completed" and result["result"] == "hello"

    # Replay: any stream consumer can read the result later.
    sub = await js.subscribe(
        subjects.result_subject("j-1"),
        stream=RESULTS,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    replayed = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    assert json.loads(replayed.data)["result"] == "hello"


async def test_nats_msg_id_becomes_the_job_id(echo_system, nc: Client) -> None:
    js = nc.jetstream()

    async def publish() -> None:
        await js.publish(
            "tether.jobs.demo.echo.1", b'{"input": "via header"}', headers={"Nats-Msg-Id": "hdr-7"}
        )

    result = await _next_result(nc, "hdr-7", publish)
    assert result["jobId"] == "hdr-7" and result["result"] == "via header"


async def test_without_any_id_a_generated_id_appears_in_the_result(echo_system, nc: Client) -> None:
    js = nc.jetstream()
    seen: list[dict] = []

    async def collect(msg) -> None:
        seen.append(json.loads(msg.data))

    sub = await nc.subscribe(subjects.RESULTS_ALL, cb=collect)
    ack = await js.publish("tether.jobs.demo.echo.1", b'{"input": "anonymous"}')
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    assert seen and seen[0]["result"] == "anonymous"
    assert re.fullmatch(rf"job-{ack.seq}-[0-9a-f]+", seen[0]["jobId"]), seen[0]["jobId"]


async def test_a_generated_id_never_names_a_job_a_client_ran_under_that_name(echo_system, nc: Client) -> None:
    """A client may call its job ``job-2``; the id-less job stored at sequence 2 still runs, under its own id."""
    js = nc.jetstream()
    seen: dict[str, dict] = {}

    async def collect(msg) -> None:
        r = json.loads(msg.data)
        seen[r["jobId"]] = r

    sub = await nc.subscribe(subjects.RESULTS_ALL, cb=collect)
    first = await js.publish("tether.jobs.demo.echo.1", b'{"jobId": "job-2", "input": "named by its client"}')
    assert first.seq == 1
    for _ in range(100):
        if "job-2" in seen:
            break
        await asyncio.sleep(0.05)
    second = await js.publish("tether.jobs.demo.echo.1", b'{"input": "no id"}')
    assert second.seq == 2
    for _ in range(100):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    assert seen["job-2"]["result"] == "named by its client"
    [other] = [r for job_id, r in seen.items() if job_id != "job-2"]
    assert other["result"] == "no id" and other["jobId"].startswith("job-2-")


async def test_model_ids_with_dots_slashes_and_colons_round_trip_in_subjects() -> None:
    subject = subjects.job_subject("acme", "Qwen/Qwen2.5-0.5B:int8", "1.0")
    assert subject == "tether.jobs.acme.Qwen~2FQwen2~2E5-0~2E5B~3Aint8.1~2E0"
    assert subjects.parse_job_subject(subject) == ("acme", "Qwen/Qwen2.5-0.5B:int8", "1.0")


async def test_a_result_too_large_for_nats_fails_at_once_and_names_itself(nc: Client) -> None:
    """Not retried for the whole budget: the same bytes are refused every time."""
    import time

    from schemas import ResultMessage, ResultStatus
    from streams import apply, topology
    from tether.errors import PayloadTooLarge
    from tether.results import publish_final
    from tether.settings import Settings

    js = nc.jetstream()
    await apply(js, topology(Settings(), nc._server_info))
    huge = ResultMessage(
        job_id="j-huge", status=ResultStatus.COMPLETED, tenant_id="demo", model_id="echo", version="1",
        result="x" * (nc.max_payload + 1), started_at=0.0, finished_at=0.0,
    )
    t0 = time.monotonic()
    with pytest.raises(PayloadTooLarge, match="more than NATS"):
        await publish_final(js, huge, {}, budget_s=20.0)
    assert time.monotonic() - t0 < 5.0
