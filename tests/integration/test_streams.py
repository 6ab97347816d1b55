"""Streams and the consumer are declared once and applied idempotently."""

from __future__ import annotations

from dataclasses import replace

from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType

from streams import DLQ, JOBS, PRESENCE, RESULTS, SCHEDULER_CONSUMER, apply, topology
from streams.definitions import cluster_replicas
from tether.settings import Settings


async def test_apply_creates_then_updates_without_error(nc: Client, settings: Settings) -> None:
    js = nc.jetstream()
    await apply(js, topology(settings))
    await apply(js, topology(settings))  # second time: update, not fail
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

    changed = replace(settings, results_max_age_s=3600.0)
    await apply(js, topology(changed))
    assert (await js.stream_info(RESULTS)).config.max_age == 3600.0


def test_replicas_follow_the_cluster_size() -> None:
    assert cluster_replicas({}) == 1
    assert cluster_replicas({"cluster": "c", "connect_urls": ["a:4222", "b:4222", "c:4222"]}) == 3
    assert cluster_replicas({"cluster": "c", "connect_urls": [f"n{i}:4222" for i in range(5)]}) == 3
    assert cluster_replicas({"cluster": "c", "connect_urls": ["a:4222"]}, configured=2) == 2
