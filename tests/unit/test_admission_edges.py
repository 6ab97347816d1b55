"""Admission edge cases: quotas that cannot work are refused at start, clock skew between gateways
does not multiply a shared rate, tokens taken are given back when a later bucket fails, and a
resend after a lost acknowledgement never reports a retryable error that would run the job twice.

The publisher and the KV bucket are stand-ins passed in as parameters: what is tested is the error
and refund logic around them (the same paths run against a real nats-server in
``tests/integration/test_gateway_enqueue.py`` and ``test_quota_shed.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import nats.errors
import nats.js.errors
import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

import services.gateway.enqueue as enqueue
from services.gateway.config import GatewayConfig, Rate
from services.gateway.quota import SharedBuckets, _decode, bucket_key, take
from tether.errors import InvalidRequest, Timeout


@pytest.mark.parametrize("spec", ["*=nan", "*=1/nan", "*=inf/1", "*=1e-320/1", "*=1/inf"])
def test_a_quota_that_cannot_work_is_refused(spec: str) -> None:
    with pytest.raises(InvalidRequest, match="finite"):
        GatewayConfig.from_env({"TETHER_QUOTAS": spec})


@pytest.mark.parametrize("spec", ["-5", "echo=-1"])
def test_a_negative_shed_depth_is_refused(spec: str) -> None:
    with pytest.raises(InvalidRequest, match="TETHER_SHED_QUEUE_DEPTH"):
        GatewayConfig.from_env({"TETHER_SHED_QUEUE_DEPTH": spec})


@pytest.mark.parametrize("skew", [0.0, 0.02, 0.1, 5.0])
def test_two_gateways_with_skewed_clocks_share_one_rate(skew: float) -> None:
    """Both take from one bucket, alternating, one request every millisecond for 10 s."""
    rate, seconds = Rate(per_s=100.0, burst=10.0), 10.0
    state, admitted, t, i = None, 0, 0.0, 0
    while t < seconds:
        d = take(state, rate, t + (skew if i % 2 else 0.0))
        if d.allowed:
            state, admitted = d.state, admitted + 1
        t += 0.001
        i += 1
    at_most = rate.burst + rate.per_s * (seconds + skew)  # the clock ahead has run this far
    at_least = 0.95 * (rate.burst + rate.per_s * seconds)
    assert at_least <= admitted <= at_most * 1.01, (admitted, at_least, at_most)


class StalledThenBroken:
    """A publisher whose first send's acknowledgement is lost, and whose resend then fails."""

    def __init__(self, second: Exception) -> None:
        self.calls, self.second = 0, second

    async def publish(self, *a: object, **k: object) -> object:
        self.calls += 1
        if self.calls == 1:
            raise nats.errors.TimeoutError()
        raise self.second


@pytest.mark.parametrize("second", [nats.errors.ConnectionClosedError(), nats.js.errors.NoStreamResponseError()])
async def test_a_resend_after_a_lost_ack_is_a_timeout_naming_the_job(
    second: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enqueue, "ACK_WAIT_S", 0.01)
    pub = StalledThenBroken(second)
    with pytest.raises(Timeout) as info:  # the first copy may be stored: not a retryable store error
        await enqueue.publish_job(pub, "tether.jobs.a.echo.1", b"x", {}, job_id="j-1", budget_s=5)  # type: ignore[arg-type]
    assert info.value.job_id == "j-1" and pub.calls == 2


@dataclass
class Entry:
    value: bytes
    revision: int


class BucketsKV:
    """Compare-and-set over a dict, with one key whose reads time out."""

    def __init__(self, broken: str) -> None:
        self.data: dict[str, Entry] = {}
        self.rev, self.broken = 0, broken

    async def get(self, key: str) -> Entry:
        if key == self.broken:
            raise nats.errors.TimeoutError()
        if key not in self.data:
            raise KeyNotFoundError()
        return self.data[key]

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise KeyWrongLastSequenceError()
        self.rev += 1
        self.data[key] = Entry(value, self.rev)
        return self.rev

    async def update(self, key: str, value: bytes, last: int) -> int:
        if key not in self.data or self.data[key].revision != last:
            raise KeyWrongLastSequenceError()
        self.rev += 1
        self.data[key] = Entry(value, self.rev)
        return self.rev


async def test_tokens_taken_are_given_back_when_a_later_bucket_fails() -> None:
    cfg = GatewayConfig.from_env({"TETHER_QUOTAS": "acme=0.001/3,acme:echo=0.001/3"})
    buckets = SharedBuckets(cfg, clock=lambda: 1000.0)
    wide, per_model = cfg.rules_for("acme", ("echo", "1"))
    kv = BucketsKV(broken=bucket_key(per_model, "acme"))
    buckets._kv = kv  # type: ignore[assignment]
    with pytest.raises(nats.errors.TimeoutError):
        await buckets.admit("acme", ("echo", "1"))
    stored = kv.data.get(bucket_key(wide, "acme"))
    assert stored is None or _decode(stored.value).tokens == 3.0
