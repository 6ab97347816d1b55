"""Placement fairness and robustness: ties shared at random, new workers scored like average ones,
presence numbers validated and the load term bounded, and an honest ``scored`` count."""

from __future__ import annotations

import random
from collections import Counter

import msgpack
import pytest
from pydantic import ValidationError

from schemas import ModelState, Presence
from services.scheduler.reliability import Reliability
from services.scheduler.scoring import AffinityPlacement, JobNeeds, terms
from tests.fleet_helpers import Clock, presence
from tether.envelope import PURPOSE_PRESENCE, Verifier, seal
from tether.fleet import FleetView
from tether.identity import Identity
from tether.signed import PresenceGate

NEEDS = JobNeeds("m", "1", region="eu")


def wire(worker_id: str, *, capacity: int = 8, depth: int = 0, seq: int = 1, draining: bool = False) -> dict:
    """Its wire form, with numbers the model would refuse left as given."""
    return presence(worker_id, seq=seq, draining=draining).wire() | {"capacity": capacity, "queueDepth": depth}


def valid(worker_id: str, **kw: object) -> Presence:
    return Presence.model_validate(wire(worker_id, **kw))  # type: ignore[arg-type]


def _fleet(clock: Clock, *presences: Presence) -> FleetView:
    fleet = FleetView(heartbeat_s=5.0, gate=PresenceGate(Verifier([], role="worker")), clock=clock)
    for p in presences:
        fleet.observe(p)
    return fleet


# ---- fairness ------------------------------------------------------------------------------------


def test_identical_idle_workers_share_sequential_jobs() -> None:
    clock = Clock()
    names = ("w-a", "w-b", "w-c")
    fleet = _fleet(clock, *(valid(w) for w in names))
    rel = Reliability(clock=clock)
    placement = AffinityPlacement(fleet, reliability=rel.score, rng=random.Random(1))
    wins: Counter[str] = Counter()
    for i in range(300):
        choice = placement.choose(NEEDS, inflight={})
        assert choice is not None
        wins[choice.worker_id] += 1
        rel.record(choice.worker_id, True)  # every job succeeds
        clock.t += 1
        for w in names:
            fleet.observe(valid(w, seq=i + 2))
    assert set(wins) == set(names) and min(wins.values()) >= 30, wins


def test_a_new_worker_scores_like_the_fleet_and_gets_work_at_once() -> None:
    clock = Clock()
    rel = Reliability(clock=clock)
    assert rel.score("never-seen") == 0.5  # no history anywhere: neutral
    for _ in range(20):
        rel.record("w-old", True)
    assert rel.score("w-new") == pytest.approx(rel.score("w-old"))
    fleet = _fleet(clock, valid("w-old"), valid("w-new"))
    placement = AffinityPlacement(fleet, reliability=rel.score, rng=random.Random(1))
    inflight: Counter[str] = Counter()
    for _ in range(10):
        choice = placement.choose(NEEDS, inflight=inflight)
        assert choice is not None
        inflight[choice.worker_id] += 1
    assert inflight["w-new"] >= 4, inflight


def test_a_failing_worker_still_scores_below_the_fleet_mean() -> None:
    rel = Reliability(clock=Clock())
    for _ in range(8):
        rel.record("good", True)
        rel.record("bad", False)
    assert rel.score("bad") < rel.score("new") < rel.score("good")


# ---- presence numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("capacity", 0), ("capacity", 2**63), ("queueDepth", -4), ("heartbeatS", 0.0)]
)
def test_presence_with_impossible_numbers_is_invalid(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        Presence.model_validate(wire("w") | {field: value})


def test_a_signed_presence_with_negative_depth_is_rejected_as_malformed() -> None:
    ident = Identity.generate("worker")
    fleet = FleetView(heartbeat_s=5.0, gate=PresenceGate(Verifier([ident.public_key], role="worker")))
    payload = wire(ident.node_id, capacity=4, depth=-4)
    data = seal(ident, msgpack.packb(payload, use_bin_type=True), PURPOSE_PRESENCE)
    assert not fleet.accept(f"tether.presence.eu.{ident.node_id}", data)
    assert fleet.rejections["malformed"] == 1 and fleet.workers() == []


def test_the_load_term_stays_within_zero_and_one() -> None:
    clock = Clock()
    # built around validation, as an older peer or a bug could hand it over
    odd = Presence.model_construct(**valid("w-odd").__dict__ | {"capacity": 4, "queue_depth": -4})
    fleet = _fleet(clock, odd, valid("w-y"))
    placement = AffinityPlacement(fleet, rng=random.Random(0))
    for inflight in ({}, {"w-odd": 2}, {"w-odd": 3}):
        choice = placement.choose(NEEDS, inflight=inflight)
        assert choice is not None and 0.0 < choice.explanation["terms"]["load"] <= 1.0
    t = terms(fleet.get("w-odd"), NEEDS, inflight=0, reliability=0.5, rtt_s=None, model_state=ModelState.WARM)  # type: ignore[arg-type]
    assert t["load"] == 1.0


# ---- explanation ---------------------------------------------------------------------------------


def test_scored_counts_every_worker_looked_at_after_a_full_scan() -> None:
    clock = Clock()
    fleet = _fleet(clock, *(valid(f"w-{i:02d}", draining=(i != 7)) for i in range(20)))
    for seed in range(10):
        choice = AffinityPlacement(fleet, rng=random.Random(seed)).choose(NEEDS, inflight={})
        assert choice is not None and choice.worker_id == "w-07"
        ex = choice.explanation
        assert ex["scored"] in (8, 20)
        assert ex["scored"] == sum(ex["excluded"].values()) + 1  # the winner and everyone excluded
