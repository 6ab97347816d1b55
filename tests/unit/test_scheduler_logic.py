"""Pure scheduler logic: breakers, reliability, affinity scoring, the fleet's model index and sweep."""

from __future__ import annotations

import random

import pytest

from schemas import ModelState, Presence
from services.scheduler.breakers import BreakerBoard, BreakerPolicy, BreakerState, Transition
from services.scheduler.reliability import Reliability
from services.scheduler.scoring import AffinityPlacement, JobNeeds, Weights, total
from tests.fleet_helpers import Clock, presence
from tether.envelope import Verifier
from tether.fleet import FleetView, Health
from tether.signed import PresenceGate

# ---- breakers ------------------------------------------------------------------------------------


def test_breaker_opens_after_threshold_within_window_then_probes_and_closes() -> None:
    clock = Clock()
    seen: list[Transition] = []
    board = BreakerBoard(BreakerPolicy(threshold=3, window_s=10, open_s=5), clock=clock, on_transition=seen.append)
    key = ("m", "1", "eu")
    for _ in range(2):
        board.failure(key, "boom")
    assert board.state(key) is BreakerState.CLOSED and board.allows(key)
    board.failure(key, "boom")
    assert board.state(key) is BreakerState.OPEN and not board.allows(key)
    assert [(t.old, t.new) for t in seen] == [(BreakerState.CLOSED, BreakerState.OPEN)]
    clock.t += 5
    assert board.state(key) is BreakerState.HALF_OPEN and board.allows(key)
    probe = board.try_acquire(key)
    assert probe is not None and probe.probe
    assert not board.allows(key), "half-open admits exactly one probe at a time"
    board.success(probe)
    assert board.state(key) is BreakerState.CLOSED and board.allows(key)
    assert [t.new for t in seen] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_an_abandoned_probe_lets_the_next_attempt_probe() -> None:
    clock = Clock()
    board = BreakerBoard(BreakerPolicy(threshold=1, window_s=10, open_s=1), clock=clock)
    key = ("m", "1", "eu")
    board.failure(key)
    clock.t += 1
    probe = board.try_acquire(key)
    assert probe is not None and not board.allows(key)
    board.abandon(probe)  # e.g. the worker refused for capacity: no verdict on the model
    assert board.allows(key) and board.state(key) is BreakerState.HALF_OPEN


def test_breaker_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    board = BreakerBoard(BreakerPolicy(threshold=3, window_s=10, open_s=5), clock=clock)
    key = ("m", "1", "eu")
    for _ in range(2):
        board.failure(key)
    clock.t += 11
    board.failure(key)
    assert board.state(key) is BreakerState.CLOSED


def test_failed_probe_reopens_for_another_full_period() -> None:
    clock = Clock()
    board = BreakerBoard(BreakerPolicy(threshold=1, window_s=10, open_s=5), clock=clock)
    key = ("m", "1", "eu")
    board.failure(key)
    clock.t += 5
    probe = board.try_acquire(key)
    assert probe is not None
    board.failure(probe, "probe failed")
    assert board.state(key) is BreakerState.OPEN and not board.allows(key)
    clock.t += 4.9
    assert not board.allows(key)
    clock.t += 0.2
    assert board.allows(key)
    snap = board.snapshot()
    assert snap[0]["modelId"] == "m" and snap[0]["state"] == "HALF_OPEN"


# ---- reliability ---------------------------------------------------------------------------------


def test_reliability_rises_with_success_falls_with_failure_and_decays() -> None:
    clock = Clock()
    rel = Reliability(half_life_s=100, clock=clock)
    assert rel.score("w") == 0.5
    for _ in range(8):
        rel.record("good", True)
        rel.record("bad", False)
    assert rel.score("good") == pytest.approx(0.9)
    assert rel.score("bad") == pytest.approx(0.1)
    clock.t += 10_000  # many half-lives: history fades back towards the prior
    assert rel.score("bad") == pytest.approx(0.5, abs=0.01)
    dirty = rel.take_dirty()
    assert [w for w, _ in dirty] == ["bad", "good"] and rel.take_dirty() == []
    restored = Reliability(half_life_s=100, clock=clock)
    restored.load([(w, r.successes, r.failures, r.updated_at) for w, r in dirty])
    assert restored.score("good") == pytest.approx(rel.score("good"))


# ---- scoring -------------------------------------------------------------------------------------


def test_weights_parse_overrides_and_rejects_unknown_names() -> None:
    w = Weights.parse("load=3, warm=0.5")
    assert (w.load, w.warm, w.region) == (3.0, 0.5, Weights().region)
    with pytest.raises(ValueError, match="unknown weight 'speed'"):
        Weights.parse("speed=2")


def _fleet(clock: Clock, *presences: Presence) -> FleetView:
    # pure state: heartbeats go straight to observe(), the (empty) gate is never consulted
    fleet = FleetView(heartbeat_s=1.0, gate=PresenceGate(Verifier([], role="worker")), clock=clock)
    for p in presences:
        fleet.observe(p)
    return fleet


def test_affinity_prefers_warm_near_reliable_idle_workers_and_explains() -> None:
    clock = Clock()
    fleet = _fleet(
        clock,
        presence("far", region="us"),
        presence("busy", depth=8),
        presence("cold", models={"m": ModelState.EVICTED}),
        presence("best"),
        presence("other-model", models={"x": ModelState.WARM}),
    )
    placement = AffinityPlacement(fleet, rng=random.Random(1))
    choice = placement.choose(JobNeeds("m", "1", region="eu"), inflight={})
    assert choice is not None and choice.worker_id == "best"
    ex = choice.explanation
    assert ex["policy"] == "affinity" and ex["candidates"] == 4
    assert ex["terms"] == {"region": 1.0, "device": 1.0, "load": 1.0, "warm": 1.0, "reliability": 0.5, "rtt": 1.0}
    assert ex["score"] == pytest.approx(total(ex["terms"], Weights()), abs=1e-3)
    # this scheduler's own in-flight jobs count as load too
    choice = placement.choose(JobNeeds("m", "1", region="eu"), inflight={"best": 64})
    assert choice is not None and choice.worker_id != "best"


def test_affinity_excludes_suspect_offline_draining_and_open_breakers() -> None:
    clock = Clock()
    fleet = _fleet(clock, presence("old"), presence("drain", draining=True))
    clock.t += 2.5  # "old" is SUSPECT now
    fleet.observe(presence("fresh-us", region="us"))
    fleet.observe(presence("drain", draining=True, seq=2))
    open_regions = {"us"}
    placement = AffinityPlacement(fleet, breaker_allows=lambda m, v, r: r not in open_regions)
    assert placement.choose(JobNeeds("m", "1", region="eu"), inflight={}) is None
    open_regions.clear()
    choice = placement.choose(JobNeeds("m", "1", region="eu"), inflight={})
    assert choice is not None and choice.worker_id == "fresh-us"
    assert choice.explanation["excluded"] == {"suspect": 1, "draining": 1}


def test_avoided_workers_are_used_only_when_nothing_else_can_serve() -> None:
    clock = Clock()
    fleet = _fleet(clock, *(presence(f"w{i}") for i in range(40)))
    placement = AffinityPlacement(fleet, sample=4, rng=random.Random(3))
    avoid = {f"w{i}" for i in range(39)}
    for _ in range(20):  # samples of 4 are mostly avoided workers: a full scan finds w39
        choice = placement.choose(JobNeeds("m", "1", region="eu"), inflight={}, avoid=avoid)
        assert choice is not None and choice.worker_id == "w39"
    choice = placement.choose(JobNeeds("m", "1", region="eu"), inflight={}, avoid=avoid | {"w39"})
    assert choice is not None and choice.worker_id in avoid | {"w39"}


def test_reliability_and_device_terms_steer_choice() -> None:
    clock = Clock()
    fleet = _fleet(clock, presence("flaky", device="cuda"), presence("solid", device="cuda"), presence("cpu"))
    scores = {"flaky": 0.1, "solid": 0.9}
    placement = AffinityPlacement(fleet, reliability=lambda w: scores.get(w, 0.5))
    choice = placement.choose(JobNeeds("m", "1", region="eu", device_class="cuda"), inflight={})
    assert choice is not None and choice.worker_id == "solid"


# ---- fleet view ----------------------------------------------------------------------------------


def test_fleet_index_follows_model_changes_and_sweep_reports_transitions() -> None:
    clock = Clock()
    fleet = _fleet(clock, presence("a"), presence("b", models={"x": ModelState.WARM}))
    assert [e.worker_id for e in fleet.serving("m", "1")] == ["a"]
    fleet.observe(presence("a", models={"x": ModelState.WARM}, seq=2))
    assert fleet.serving("m", "1") == [] and len(fleet.serving("x", "1")) == 2
    assert {(e.worker_id, old, new) for e, old, new in fleet.sweep()} == {
        ("a", None, Health.HEALTHY),
        ("b", None, Health.HEALTHY),
    }
    assert fleet.sweep() == []
    clock.t += 2.5
    assert {(e.worker_id, new) for e, _old, new in fleet.sweep()} == {("a", Health.SUSPECT), ("b", Health.SUSPECT)}
    clock.t += 1.0
    assert {new for _e, _old, new in fleet.sweep()} == {Health.OFFLINE}
    assert fleet.mark_draining("a") and fleet.get("a").presence.draining  # type: ignore[union-attr]
    clock.t += fleet.forget_after * fleet.heartbeat_s
    fleet.sweep()
    assert fleet.workers() == [] and fleet.serving("x", "1") == []


@pytest.mark.parametrize("max_deliver", [4, 10, 20, 50, 100, 1000])
@pytest.mark.parametrize("queue_wait_s", [1.0, 10.0, 30.0, 120.0, 300.0, 3600.0, 86_400.0, 1e7])
def test_waiting_for_capacity_through_the_whole_queue_wait_fits_in_the_delivery_budget(
    queue_wait_s: float, max_deliver: int
) -> None:
    from services.scheduler.handover import capacity_wait_delay
    from tether.settings import Settings

    settings = Settings.from_env()
    settings.queue_wait_s, settings.max_deliver = queue_wait_s, max_deliver
    waited, deliveries = 0.0, 1
    while waited <= queue_wait_s:  # each hand-back costs one more delivery
        delay = capacity_wait_delay(waited, settings)
        assert delay > 0
        waited += delay
        deliveries += 1
    # three quarters of the cap (rounded down) plus the final delivery that answers no_capacity
    assert deliveries <= max(3, int(0.75 * max_deliver)) + 1, deliveries
    assert capacity_wait_delay(0.0, settings) == 0.25  # a freed slot is tried again at once


def test_without_a_delivery_cap_a_waiting_job_is_looked_at_every_two_seconds_at_most() -> None:
    from services.scheduler.handover import capacity_wait_delay
    from tether.settings import Settings

    settings = Settings.from_env()
    settings.queue_wait_s, settings.max_deliver = 3600.0, -1
    assert capacity_wait_delay(0.0, settings) == 0.25
    assert capacity_wait_delay(3000.0, settings) == 2.0


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.JOBS.schedulers.3.1042.977.1764630000123456789.12",
        "$JS.ACK.hub.ACCHASH.JOBS.schedulers.1.7.7.1764630000987654321.0.XyZ",
        "$JS.ACK._.ACCHASH.JOBS.schedulers.2.8.9.1764630000000000001.5",
    ],
)
def test_delivery_of_reads_what_nats_py_metadata_reads(reply: str) -> None:
    from nats.aio.msg import Msg

    from services.scheduler.intake import delivery_of

    meta = Msg.Metadata._from_reply(reply)
    seq, deliveries, stored_ns = delivery_of(reply)
    assert (seq, deliveries) == (meta.sequence.stream, meta.num_delivered)
    assert stored_ns / 1e9 == pytest.approx(meta.timestamp.timestamp(), abs=1e-6)


@pytest.mark.parametrize("reply", [None, "", "_INBOX.abc", "$JS.ACK.JOBS.x.y", "$JS.ACK.JOBS.c.a.b.c.d.e"])
def test_delivery_of_anything_else_is_zeros(reply: str | None) -> None:
    from services.scheduler.intake import delivery_of

    assert delivery_of(reply) == (0, 0, 0)
