"""Bad input at the edges: an unknown field with a huge name, an oversize body or an unsupported
Content-Type on a bare publish, a malformed subject, deep msgpack: each gets one answer, on its own
job id, naming the field and the cause."""
from __future__ import annotations

import json

from nats.aio.client import Client

from tether import subjects

S = "tether.jobs.demo.echo.1"
#: 800,000 raw control characters (JSON strings may carry them: the decoder is not strict): the unknown-field
#: error names the key twice, as the field (\u0001, 6 bytes each) and in the message (repr: \\x01, 5 bytes).
HUGE_KEY = b"\x01" * 800_000


async def _result(nc: Client, job_id: str, publish, timeout: float = 10.0) -> dict:
    sub = await nc.subscribe(subjects.result_subject(job_id))
    await publish()
    try:
        msg = await sub.next_msg(timeout=timeout)
    finally:
        await sub.unsubscribe()
    return json.loads(msg.data)


async def test_infer_with_a_long_unknown_field_gets_an_error_reply(echo_system, nc: Client) -> None:
    body = b'{"tenantId":"demo","modelId":"echo","input":"x","' + HUGE_KEY + b'":1}'
    msg = await nc.request(subjects.INFER, body, timeout=3)
    assert json.loads(msg.data)["error"]["code"] == "invalid_request"


async def test_bare_publish_with_a_long_unknown_field_gets_its_final_result(echo_system, nc: Client) -> None:
    body = b'{"jobId":"rv-huge-key","input":"x","' + HUGE_KEY + b'":1}'
    result = await _result(nc, "rv-huge-key", lambda: nc.jetstream().publish(S, body))
    assert result["error"]["code"] == "invalid_request"


async def test_bare_publish_oversize_result_lands_on_its_job_id(echo_system, nc: Client, settings) -> None:
    body = json.dumps({"jobId": "rv-big", "input": "x" * (settings.max_payload + 10)}).encode()
    result = await _result(nc, "rv-big", lambda: nc.jetstream().publish(S, body), timeout=5)
    assert result["error"]["code"] == "payload_too_large"


async def test_bare_publish_unsupported_content_type_lands_on_its_job_id(echo_system, nc: Client) -> None:
    body = b'{"jobId":"rv-ctype","input":"x"}'
    pub = lambda: nc.jetstream().publish(S, body, headers={"Content-Type": "application/yaml"})  # noqa: E731
    result = await _result(nc, "rv-ctype", pub, timeout=5)
    assert result["error"]["field"] == "Content-Type"


async def test_bad_subject_and_deep_msgpack_errors_name_field_and_cause(echo_system, nc: Client) -> None:
    js = nc.jetstream()
    r = await _result(nc, "rv-subj", lambda: js.publish("tether.jobs.de~zz.echo.1", b'{"jobId":"rv-subj","input":"x"}'))
    assert r["error"]["field"] is not None
    hdrs = {"Content-Type": "application/msgpack", "Nats-Msg-Id": "rv-deep"}
    r = await _result(nc, "rv-deep", lambda: js.publish(S, b"\x91" * 200_000 + b"\xc0", headers=hdrs))
    assert r["error"]["message"].strip() != "malformed msgpack:"
