"""``tether.infer.<tenant>``: the tenant comes from the subject, which NATS permissions tie to credentials."""

from __future__ import annotations

import json

from nats.aio.client import Client

from tether import subjects


async def test_tenant_from_the_subject(echo_system, nc: Client) -> None:
    body = {"modelId": "echo", "version": "1", "input": "scoped"}
    msg = await nc.request(subjects.infer_subject("acme"), json.dumps(body).encode(), timeout=10)
    reply = json.loads(msg.data)
    assert reply["result"] == "scoped"
    stored = await nc.jetstream().get_last_msg("RESULTS", subjects.result_subject(reply["jobId"]))
    assert json.loads(stored.data)["tenantId"] == "acme"


async def test_a_body_claiming_another_tenant_is_refused(echo_system, nc: Client) -> None:
    body = {"tenantId": "globex", "modelId": "echo", "version": "1", "input": "x"}
    msg = await nc.request(subjects.infer_subject("acme"), json.dumps(body).encode(), timeout=10)
    error = json.loads(msg.data)["error"]
    assert error["code"] == "unauthorized" and error["field"] == "tenantId"
    same = {**body, "tenantId": "acme"}
    ok = json.loads((await nc.request(subjects.infer_subject("acme"), json.dumps(same).encode(), timeout=10)).data)
    assert ok["result"] == "x"
