"""Streams and the consumer are declared once and applied idempotently."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType

from streams import DLQ, JOBS, PRESENCE, RESULTS, SCHEDULER_CONSUMER, apply, topology
from streams.definitions import cluster_replicas
from tether.natsserver import NatsServer
from tether.settings import Settings


async def test_apply_creates_then_updates_without_error(nc: Client, settings: Settings) -> None:
    js = nc.jetstream()
    await apply(js, topology(settings))
    await apply(js, topology(settings), update=True)  # second time: update, not fail
    jobs = await js.stream_info(JOBS)
    assert jobs.config.retention == RetentionPolicy.WORK_QUEUE
    assert jobs.config.storage == StorageType.FILE
    assert jobs.config.duplicate_window == settings.jobs_dedupe_s
    results = await js.stream_info(RESULTS)
    assert results.config.max_age == settings.results_max_age_s
    presence = await js.stream_info(PRESENCE)
    assert presence.config.max_msgs_per_subject == 1
    await js.stream_info(DLQ)
    consumer = await js.consumer_info(JOBS, SCHEDULER_CONSUMER)
    assert consumer.config.durable_name == SCHEDULER_CONSUMER

    changed = replace(settings, results_max_age_s=3600.0, max_deliver=7)
    await apply(js, topology(changed))  # a gateway, a worker or a CLI tool: creates only
    assert (await js.stream_info(RESULTS)).config.max_age == settings.results_max_age_s
    assert (await js.consumer_info(JOBS, SCHEDULER_CONSUMER)).config.max_deliver == settings.max_deliver
    await apply(js, topology(changed), update=True)  # the scheduler: brings them to its settings
    assert (await js.stream_info(RESULTS)).config.max_age == 3600.0
    assert (await js.consumer_info(JOBS, SCHEDULER_CONSUMER)).config.max_deliver == 7


def test_replicas_follow_the_cluster_size() -> None:
    assert cluster_replicas({}) == 1
    assert cluster_replicas({"cluster": "c", "connect_urls": ["a:4222", "b:4222", "c:4222"]}) == 3
    assert cluster_replicas({"cluster": "c", "connect_urls": [f"n{i}:4222" for i in range(5)]}) == 3
    assert cluster_replicas({"cluster": "c", "connect_urls": ["a:4222"]}, configured=2) == 2


def test_starting_a_running_server_again_starts_no_second_one(tmp_path: Path) -> None:
    # A second process on the same store directory (it fails to bind the port) broke the first
    # one's file store ("no message cache" after the first block filled): never start one.
    server = NatsServer(store_dir=tmp_path / "js")
    first = server.start().proc
    assert first is not None
    with server as same:  # __enter__ starts it: here, again
        assert same is server and server.proc is first
        assert server.proc.poll() is None
        store = str(tmp_path / "js")
        on_store = [p for p in psutil.process_iter(["cmdline"]) if store in " ".join(p.info["cmdline"] or [])]
        assert len(on_store) == 1
    assert server.proc is None


def test_a_server_refuses_to_start_on_a_port_already_taken(tmp_path: Path) -> None:
    first = NatsServer(store_dir=tmp_path / "one").start()
    try:
        second = NatsServer(store_dir=tmp_path / "two", port=first.port)
        with pytest.raises(RuntimeError, match="in use"):
            second.start()
        assert second.proc is None
    finally:
        first.stop()


async def test_buckets_follow_the_settings_when_the_scheduler_updates(nc: Client, settings: Settings) -> None:
    """KV buckets and the object store are streams too: an update brings their TTL and history to the settings."""
    from streams.kv import IDEMPOTENCY_BUCKET, RESUME_BUCKET, apply_kv, kv_buckets, resume_bucket

    js = nc.jetstream()
    first = replace(settings, queue_wait_s=40.0, results_max_age_s=3600.0)
    await apply(js, topology(first))
    await apply_kv(js, (*kv_buckets(first), resume_bucket(first)))
    assert (await js.stream_info(f"KV_{RESUME_BUCKET}")).config.max_age == pytest.approx(
        40.0 + first.job_lease_s + 60.0
    )

    later = replace(settings, queue_wait_s=900.0, results_max_age_s=86_400.0)
    await apply_kv(js, (*kv_buckets(later), resume_bucket(later)))  # a gateway: creates only, changes nothing
    assert (await js.stream_info(f"KV_{IDEMPOTENCY_BUCKET}")).config.max_age == pytest.approx(3600.0)
    await apply(js, topology(later), update=True)
    await apply_kv(js, (*kv_buckets(later), resume_bucket(later)), update=True)  # the scheduler
    assert (await js.stream_info(f"KV_{RESUME_BUCKET}")).config.max_age == pytest.approx(
        900.0 + later.job_lease_s + 60.0
    )
    assert (await js.stream_info(f"KV_{IDEMPOTENCY_BUCKET}")).config.max_age == pytest.approx(86_400.0)
    kv = await js.key_value(RESUME_BUCKET)  # still a working bucket after the update
    await kv.put("r.x", b"1")
    assert (await kv.get("r.x")).value == b"1"
    shorter = replace(settings, queue_wait_s=20.0, results_max_age_s=60.0)  # TTLs below the 120 s duplicate window
    await apply_kv(js, (*kv_buckets(shorter), resume_bucket(shorter)), update=True)
    resume = (await js.stream_info(f"KV_{RESUME_BUCKET}")).config
    assert resume.max_age == pytest.approx(20.0 + shorter.job_lease_s + 60.0)
    assert resume.duplicate_window is not None and resume.duplicate_window <= resume.max_age
    assert (await js.stream_info(f"KV_{IDEMPOTENCY_BUCKET}")).config.max_age == pytest.approx(60.0)
    again = (await js.stream_info(f"KV_{RESUME_BUCKET}")).config
    await apply_kv(js, (resume_bucket(shorter),), update=True)  # nothing differs: nothing changes
    assert (await js.stream_info(f"KV_{RESUME_BUCKET}")).config == again



@pytest.fixture
def no_jetstream_url() -> Iterator[str]:
    """A nats-server started without JetStream."""
    import subprocess

    from tether.natsserver import free_port, server_binary

    port = free_port()
    proc = subprocess.Popen([server_binary(), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_server_without_jetstream_is_reported_at_once_not_waited_for(
    tmp_path: Path, no_jetstream_url: str
) -> None:
    """The settle wait is for a cluster that forms; a server started without JetStream never will."""
    import asyncio
    import time

    from nats.js.errors import ServiceUnavailableError

    from tether.connection import connect

    nc = None
    for _ in range(100):
        try:
            nc = await connect(no_jetstream_url, name="no-js", max_reconnect_attempts=0)
            break
        except Exception:
            await asyncio.sleep(0.05)
    assert nc is not None, "nats-server did not listen"
    try:
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailableError):
            await apply(nc.jetstream(), topology(Settings(home=tmp_path)))
        assert time.monotonic() - t0 < 10
    finally:
        await nc.close()
