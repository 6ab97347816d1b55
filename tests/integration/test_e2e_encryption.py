"""End-to-end payload encryption: gateway, scheduler, NATS and the store see only ciphertext."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nacl.public import PrivateKey
from nats.aio.client import Client
from nats.aio.msg import Msg

from streams import RESULTS
from tests.conftest import start_system
from tether import client, subjects
from tether.e2e import FleetBox, fleet_key_path, is_sealed, open_output, seal_input
from tether.errors import InvalidRequest
from tether.settings import Settings


async def test_sealed_input_round_trip_leaves_no_plaintext(
    settings: Settings, nc: Client, tmp_path: Path
) -> None:
    seen: list[bytes] = []

    async def sniff(msg: Msg) -> None:
        seen.append(msg.data)

    await nc.subscribe(">", cb=sniff)  # everything NATS carries, including JetStream traffic
    system = await start_system(settings, ["echo"])
    try:
        fleet = FleetBox.load(fleet_key_path(settings.keys_dir)).public_key
        assert fleet is not None
        tenant = PrivateKey.generate()
        secret = f"the launch code is {os.urandom(8).hex()}"
        sealed = seal_input(secret, fleet, tenant)
        assert secret not in sealed

        reply = await client.infer(nc, model="echo", input=sealed)
        assert is_sealed(reply["result"])
        assert open_output(reply["result"], tenant) == secret
        with pytest.raises(InvalidRequest):
            open_output(reply["result"], PrivateKey.generate())  # nobody else can read the result

        await nc.flush()
        assert seen, "the sniffer saw the traffic"
        assert not [m for m in seen if secret.encode() in m]
        js = nc.jetstream()
        stored = await js.get_last_msg(RESULTS, subjects.result_subject(reply["jobId"]))
        assert secret.encode() not in stored.data
        assert any(sealed.encode() in m for m in seen)  # the job crossed NATS (and JOBS) as ciphertext
    finally:
        await system.close()
    for path in settings.home.glob("tether.db*"):
        assert secret.encode() not in path.read_bytes(), path


async def test_input_sealed_to_another_fleet_key_fails_clearly(settings: Settings, nc: Client) -> None:
    system = await start_system(settings, ["echo"])
    try:
        wrong = bytes(PrivateKey.generate().public_key)
        with pytest.raises(InvalidRequest, match="could not be opened"):
            await client.infer(
                nc, model="echo", input=seal_input("hi", wrong, PrivateKey.generate()), timeout=30
            )
    finally:
        await system.close()


async def test_worker_without_the_fleet_key_refuses_sealed_jobs_so_another_runs_them(
    settings: Settings, nc: Client
) -> None:
    """A mixed fleet (a new worker not yet given ``fleet.box``): sealed jobs go to the worker that holds it."""
    system = await start_system(settings, ["echo"], workers=2)
    try:
        keyless = system.workers[1]
        keyless.fleet_box = FleetBox(None)
        fleet = system.workers[0].fleet_box.public_key
        assert fleet is not None
        tenant = PrivateKey.generate()
        for i in range(12):  # placement spreads them: without the refusal about half would fail
            reply = await client.infer(nc, model="echo", input=seal_input(f"n{i}", fleet, tenant), timeout=30)
            assert open_output(reply["result"], tenant) == f"n{i}"
            assert reply["workerId"] == system.workers[0].worker_id
        assert keyless.completed == 0 and keyless.failed == 0
    finally:
        await system.close()


async def test_a_sealed_job_no_worker_can_open_says_why_it_found_no_capacity(settings: Settings, nc: Client) -> None:
    from dataclasses import replace

    from tether.errors import NoCapacity

    settings = replace(settings, queue_wait_s=1.0)
    system = await start_system(settings, ["echo"])
    try:
        worker = system.workers[0]
        fleet = worker.fleet_box.public_key
        assert fleet is not None
        worker.fleet_box = FleetBox(None)  # no worker of this fleet holds the key
        with pytest.raises(NoCapacity, match="holds no fleet key"):
            await client.infer(nc, model="echo", input=seal_input("x", fleet, PrivateKey.generate()), timeout=30)
    finally:
        await system.close()
