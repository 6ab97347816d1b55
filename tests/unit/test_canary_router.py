"""Canary routing and its error budget, as pure logic (the system test is tests/integration/test_canary.py)."""

from __future__ import annotations

import random

import pytest

from services.gateway.canary import PROMOTED, ROLLED_BACK, Canary, CanaryRouter, decode_table, encode_table


def router(**kw: object) -> CanaryRouter:
    r = CanaryRouter(rng=random.Random(7))
    fields: dict[str, object] = {"model_id": "m", "stable": "1", "canary": "2", "weight": 30.0, **kw}
    r.set_table({"m": Canary(**fields)})  # type: ignore[arg-type]
    return r


def test_a_share_of_the_stable_versions_requests_goes_to_the_canary() -> None:
    r = router()
    sent = [r.route("m", "1") for _ in range(1000)]
    share = sum(1 for version, canary in sent if canary and version == "2")
    assert 220 < share < 380, share  # 30% of 1,000, seeded
    assert all(v == "1" for v, c in sent if not c)
    assert r.route("m", "3") == ("3", False)  # another version asked for by name is left alone
    assert r.route("other", "1") == ("1", False)
    assert router(state=ROLLED_BACK).route("m", "1") == ("1", False)
    assert router(state=PROMOTED, weight=100.0).route("m", "1") == ("2", True)


def test_over_budget_rolls_back_and_within_budget_steps_up() -> None:
    r = router(budget=0.2, min_requests=10)
    for _ in range(8):
        assert r.record("m", "2", None) is None
    assert r.record("m", "2", "invalid_request") is None  # the client's mistake: not counted
    assert r.record("m", "1", "worker_failed") is None  # the stable version: not the canary's budget
    assert r.record("m", "2", "worker_failed") is None
    assert r.record("m", "2", "timeout") is None  # 2 of 10: 20%, not over a 20% budget, no step
    for _ in range(7):
        r.record("m", "2", None)
    for _ in range(2):
        r.record("m", "2", "dead_lettered")
    verdict = r.record("m", "2", "worker_failed")  # 3 of 10: over budget
    assert verdict is not None and verdict.state == ROLLED_BACK and verdict.weight == 0.0
    assert "30.0%" in verdict.reason and "20.0%" in verdict.reason

    r = router(weight=50.0, step=30.0, min_requests=4)
    for _ in range(3):
        assert r.record("m", "2", None) is None
    up = r.record("m", "2", None)
    assert up is not None and up.weight == 80.0 and up.state == "running"
    r.set_table({"m": up})
    for _ in range(3):
        r.record("m", "2", None)
    done = r.record("m", "2", None)
    assert done is not None and done.weight == 100.0 and done.state == PROMOTED


def test_policies_are_checked_and_round_trip() -> None:
    c = Canary(model_id="m", stable="1", canary="2", weight=10.0, step=5.0, updated_at=1.5)
    assert decode_table(encode_table({"m": c})) == {"m": c}
    assert encode_table({"m": c}).startswith(b'{"m":{"modelId":"m"')
    for bad in ({"canary": "1"}, {"weight": 101.0}, {"budget": 1.5}, {"min_requests": 0}, {"state": "odd"}):
        fields: dict[str, object] = {"model_id": "m", "stable": "1", "canary": "2", "weight": 10.0, **bad}
        with pytest.raises(ValueError):
            Canary(**fields).check()  # type: ignore[arg-type]
