"""Pure gateway policy: token-bucket arithmetic, policy spec parsing, rule choice, SLI percentiles."""

from __future__ import annotations

import pytest

from services.gateway.config import GatewayConfig, Rate, parse_quotas
from services.gateway.quota import BucketState, bucket_key, take
from services.gateway.slis import Slis, merge, percentile
from tether.errors import InvalidRequest

RATE = Rate(per_s=2.0, burst=3.0)


def test_a_new_bucket_is_full_and_drains() -> None:
    state, now = None, 100.0
    for _ in range(3):
        d = take(state, RATE, now)
        assert d.allowed
        state = d.state
    d = take(state, RATE, now)
    assert not d.allowed and d.retry_after_s == pytest.approx(0.5)


def test_refill_is_proportional_to_time_and_capped_at_burst() -> None:
    empty = BucketState(tokens=0.0, ts=100.0)
    assert not take(empty, RATE, 100.25).allowed  # 0.5 token
    half = take(empty, RATE, 100.5)  # exactly one token refilled
    assert half.allowed and half.state.tokens == pytest.approx(0.0)
    later = take(empty, RATE, 1000.0)
    assert later.allowed and later.state.tokens == pytest.approx(RATE.burst - 1)


def test_a_clock_stepping_back_refills_nothing() -> None:
    d = take(BucketState(tokens=0.2, ts=200.0), RATE, 150.0)
    assert not d.allowed and d.state.tokens == pytest.approx(0.2)


def test_admitted_count_over_a_window_is_rate_times_time_plus_burst() -> None:
    state, admitted = None, 0
    for i in range(1000):  # 10 s of attempts every 10 ms
        d = take(state, RATE, 100.0 + i * 0.01)
        state = d.state
        admitted += d.allowed
    assert admitted == pytest.approx(RATE.per_s * 10 + RATE.burst, abs=1)


def test_quota_spec_parsing_and_rule_choice() -> None:
    cfg = GatewayConfig.from_env(
        {"TETHER_QUOTAS": "*=50/100, acme=5/10, acme:smollm2=1/2, *:echo=100"}
    )
    acme = cfg.rules_for("acme", ("smollm2", "1"))
    assert [(r.tenant, r.model, r.rate) for r in acme] == [
        ("acme", None, Rate(5, 10)),
        ("acme", "smollm2", Rate(1, 2)),
    ]
    other = cfg.rules_for("globex", ("echo", "1"))
    assert [(r.tenant, r.model, r.rate) for r in other] == [("*", None, Rate(50, 100)), ("*", "echo", Rate(100, 100))]
    assert bucket_key(acme[0], "acme") != bucket_key(acme[0], "globex")
    assert GatewayConfig.from_env({}).rules_for("x", ("echo", "1")) == []


def test_a_rule_written_for_an_alias_applies_to_requests_that_name_it() -> None:
    cfg = GatewayConfig.from_env({"TETHER_QUOTAS": "acme:phi-2=1/2, *:smollm2=10/10"})
    served = ("smollm2", "1")
    both = cfg.rules_for("acme", served, "phi-2")  # the served model's limit and the alias's both hold
    assert [(r.tenant, r.model) for r in both] == [("*", "smollm2"), ("acme", "phi-2")]
    assert [(r.tenant, r.model) for r in cfg.rules_for("acme", ("other", "1"), "phi-2")] == [("acme", "phi-2")]
    assert [(r.tenant, r.model) for r in cfg.rules_for("acme", served)] == [("*", "smollm2")]


def test_shed_degrade_alias_specs() -> None:
    cfg = GatewayConfig.from_env(
        {
            "TETHER_SHED_QUEUE_DEPTH": "500, big:2=8",
            "TETHER_DEGRADE": "big:2=small",
            "TETHER_DEGRADE_TENANTS": "acme",
            "TETHER_MODEL_ALIASES": "phi-2:1.0=smollm2-135m-instruct",
            "TETHER_HTTP_AUTH": "required",
        }
    )
    assert cfg.shed_depth(("big", "2")) == 8 and cfg.shed_depth(("other", "1")) == 500
    assert cfg.degrade == {("big", "2"): ("small", "1")}
    assert cfg.may_degrade("acme") and not cfg.may_degrade("globex")
    assert cfg.aliases == {("phi-2", "1.0"): ("smollm2-135m-instruct", "1")}
    assert cfg.auth_required


@pytest.mark.parametrize(
    "env",
    [
        {"TETHER_QUOTAS": "acme=fast"},
        {"TETHER_QUOTAS": "acme"},
        {"TETHER_QUOTAS": "acme=0/1"},
        {"TETHER_SHED_QUEUE_DEPTH": "lots"},
        {"TETHER_DEGRADE": "=small"},
        {"TETHER_HTTP_AUTH": "maybe"},
    ],
)
def test_bad_specs_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest):
        GatewayConfig.from_env(env)


def test_parse_quotas_burst_defaults_to_rate() -> None:
    assert parse_quotas("t=4")[0].rate == Rate(4, 4)


def test_slis_percentiles_and_merge_across_gateways() -> None:
    now = [1000.0]
    a, b = Slis(clock=lambda: now[0]), Slis(clock=lambda: now[0])
    for ms in range(1, 101):
        a.record("echo", "ok", float(ms))
    b.record("echo", "quota_exceeded")
    b.record("echo", "no_capacity")
    merged = merge([a.snapshot(), b.snapshot()], now=now[0])
    assert merged["requests"] == 102 and merged["gateways"] == 2
    assert merged["throttleRate"] == pytest.approx(1 / 102, abs=1e-4)
    assert merged["successRate"] == pytest.approx(100 / 102, abs=1e-4)
    p50, p95 = merged["latencyMs"]["echo"]["p50"], merged["latencyMs"]["echo"]["p95"]
    assert 50 <= p50 <= 50 * 1.13 and 95 <= p95 <= 95 * 1.13  # bucket bounds are ~12% apart
    assert merged["throughput"][-1] == [1000, 100]
    now[0] += 400  # past the window: everything ages out
    assert merge([a.snapshot()], now=now[0])["requests"] == 0
    assert percentile({}, 0.5) is None


def test_http_max_connections_is_a_positive_integer() -> None:
    from services.gateway.config import GatewayConfig

    assert GatewayConfig.from_env({}).http_max_connections == 1000
    assert GatewayConfig.from_env({"TETHER_HTTP_MAX_CONNECTIONS": "50"}).http_max_connections == 50
    for bad in ("0", "-3", "many"):
        with pytest.raises(InvalidRequest, match="TETHER_HTTP_MAX_CONNECTIONS"):
            GatewayConfig.from_env({"TETHER_HTTP_MAX_CONNECTIONS": bad})
