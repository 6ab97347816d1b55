"""A real 3-node NATS cluster on loopback ports: streams are replicated three times, and a node
killed under load loses no job (DESIGN.md, "Scale-out path")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from streams import JOBS, RESULTS, apply, topology
from tests.conftest import System, start_system
from tether import client
from tether.connection import connect
from tether.errors import TetherError
from tether.natsserver import NatsServer, free_port
from tether.settings import Settings

NODES = 3
JOBS_N = 150


def _nodes(tmp_path: Path) -> list[NatsServer]:
    """Three nodes routed to each other, not started."""
    ports = [free_port() for _ in range(NODES)]
    return [
        NatsServer(
            store_dir=tmp_path / f"n{i}" / "js",
            log_file=tmp_path / f"n{i}" / "nats.log",
            server_name=f"n{i}",
            cluster_port=port,
            routes=[f"nats://127.0.0.1:{p}" for p in ports if p != port],
            die_with_parent=True,
        )
        for i, port in enumerate(ports)
    ]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    nodes = _nodes(tmp_path)
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _url(nodes: list[NatsServer]) -> str:
    return ",".join(n.url for n in nodes)


async def _jetstream_ready(nodes: list[NatsServer], timeout: float = 30.0) -> None:
    """Until every node serves JetStream and an R3 stream can be placed (then it is removed)."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        nc = await connect(node.url, name="cluster-probe")
        js = nc.jetstream()
        try:
            while True:
                try:
                    await js.account_info()
                    if node is nodes[-1]:
                        await js.add_stream(StreamConfig(name="READY", subjects=["ready.probe"], num_replicas=NODES))
                        await js.delete_stream("READY")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.25)
        finally:
            await nc.close()


@pytest_asyncio.fixture
async def clustered(tmp_path: Path, cluster: list[NatsServer]) -> AsyncIterator[tuple[System, list[NatsServer]]]:
    url = _url(cluster)
    await _jetstream_ready(cluster)
    settings = Settings(
        admission_bench=False,  # as the conftest settings: no start-up probe on the shared cores
        home=tmp_path,
        nats_url=url,
        heartbeat_s=0.5,
        store=f"sqlite:///{tmp_path / 'tether.db'}",
        request_timeout_s=20.0,
        queue_wait_s=20.0,
        dispatch_ack_s=2.0,
        job_lease_s=4.0,  # JOBS' ack wait: an ack lost with the dead node is redelivered after it
    )
    system = await start_system(settings, ["echo"])
    try:
        yield system, cluster
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(system.close(), 60)


async def _messages(js: JetStreamContext, stream: str, expect: int, timeout: float = 20.0) -> int:
    """A stream's message count once it is ``expect`` (or at the timeout), asked again while the
    stream's leader moves off the dead node (its API answers time out meanwhile)."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            count = (await js.stream_info(stream)).state.messages
            if count == expect:
                break
        await asyncio.sleep(0.25)
    return count


async def _ask_until_answered(nc: Client, i: int, deadline: float) -> dict[str, object]:
    """One request, retried under its idempotency key through the node's death until answered."""
    while True:
        try:
            return await client.infer(
                nc, model="echo", input=f"job {i}", idempotency_key=f"cluster-{i}", timeout=10.0
            )
        except (TetherError, Exception):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_streams_are_replicated_and_a_killed_node_loses_no_job(
    clustered: tuple[System, list[NatsServer]],
) -> None:
    system, nodes = clustered
    # The node to kill: the one the scheduler talks to (it must move its pull consumer and its
    # store of jobs in flight to another); the client talks to the other two.
    sch_nc = system.scheduler.nc  # type: ignore[attr-defined]
    here = f"{sch_nc.connected_url.hostname}:{sch_nc.connected_url.port}"
    victim = next(n for n in nodes if f"{n.host}:{n.port}" == here)
    nc = await connect(_url([n for n in nodes if n is not victim]), name="cluster-client")
    try:
        js = nc.jetstream()
        for stream in (JOBS, RESULTS):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == NODES, (stream, info.config.num_replicas)
            assert info.cluster is not None and len(info.cluster.replicas or []) == NODES - 1

        deadline = time.monotonic() + 90.0
        done: list[dict[str, object]] = []

        async def one(i: int) -> None:
            done.append(await _ask_until_answered(nc, i, deadline))

        tasks = [asyncio.ensure_future(one(i)) for i in range(JOBS_N)]
        while len(done) < JOBS_N // 3:  # under load ...
            await asyncio.sleep(0.01)
        victim.kill()  # ... the scheduler's node dies; the roles connected to it move to the others
        await asyncio.gather(*tasks)

        assert sorted(str(r["result"]) for r in done) == sorted(f"job {i}" for i in range(JOBS_N))
        # every result once in RESULTS, as the surviving replicas tell it
        assert await _messages(js, RESULTS, JOBS_N) == JOBS_N
        # JOBS empties: acks lost with the dead node come back as redeliveries after the ack wait,
        # and a redelivered job whose result is stored is acknowledged, not run again
        assert await _messages(js, JOBS, 0, timeout=30.0) == 0
        ran = sum(w.completed for w in system.workers)  # type: ignore[attr-defined]
        assert ran == JOBS_N, f"{ran} runs for {JOBS_N} jobs"
    finally:
        await nc.close()


async def test_a_role_started_before_its_cluster_has_formed_waits_for_it(tmp_path: Path) -> None:
    """One node up, its peers not yet: JetStream has no leader and cannot place an R3 stream. A role's
    declarations wait for the cluster (``streams.apply.settling``) instead of failing its start."""
    nodes = _nodes(tmp_path)
    try:
        nodes[0].start()
        nc = await connect(nodes[0].url, name="early-role")
        try:
            js = nc.jetstream()
            declared = asyncio.ensure_future(apply(js, topology(Settings(home=tmp_path, replicas=NODES))))
            await asyncio.sleep(3.0)
            assert not declared.done(), declared  # still waiting: no error, no streams half-declared
            for node in nodes[1:]:
                node.start()
            await asyncio.wait_for(declared, 60)
            info = await js.stream_info(JOBS)
            assert info.config.num_replicas == NODES
        finally:
            await nc.close()
    finally:
        for node in nodes:
            node.stop()


def test_the_cluster_node_config_is_valid() -> None:
    import subprocess

    from tether.natsserver import server_binary

    conf = Path(__file__).resolve().parents[2] / "infra" / "nats" / "cluster.conf"
    r = subprocess.run([server_binary(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "is valid" in r.stdout + r.stderr, r.stdout + r.stderr


def test_tether_nats_passes_the_cluster_flags(tmp_path: Path) -> None:
    node = NatsServer(
        store_dir=tmp_path, server_name="n2", cluster_port=6222, routes=["nats://n1:6222", "nats://n3:6222"]
    )
    assert node.cluster_args() == [
        "--server_name", "n2", "--cluster", "nats://127.0.0.1:6222", "--cluster_name", "tether",
        "--routes", "nats://n1:6222,nats://n3:6222",
    ]
    assert NatsServer(store_dir=tmp_path).cluster_args() == []
