"""The fleet view against a changing world: worker restarts under the same id, keys revoked at run
time (deny list, TETHER_TRUST bucket, allowlist file), and worker churn."""

from __future__ import annotations

import random
from pathlib import Path

from schemas import ModelAnnouncement, ModelState
from services.scheduler.scoring import AffinityPlacement, JobNeeds
from tests.fleet_helpers import Clock, presence
from tether.envelope import PURPOSE_MODEL, PURPOSE_PRESENCE, Verifier
from tether.fleet import FleetView, Health
from tether.identity import Identity
from tether.signed import PresenceGate, seal_message
from tether.trust import TrustStore, allowlist_line, kv_key

NEEDS = JobNeeds("m", "1", region="eu")


def _signed_fleet(verifier: Verifier, ident: Identity) -> FleetView:
    fleet = FleetView(heartbeat_s=5.0, gate=PresenceGate(verifier))  # wall clock: envelopes are fresh
    subject = f"tether.presence.eu.{ident.node_id}"
    assert fleet.accept(subject, seal_message(ident, presence(ident.node_id), PURPOSE_PRESENCE))
    return fleet


# ---- incarnations --------------------------------------------------------------------------------


def test_a_restart_under_the_same_id_is_a_new_incarnation_and_late_old_beats_are_ignored() -> None:
    clock = Clock()
    fleet = FleetView(heartbeat_s=1.0, gate=PresenceGate(Verifier([], role="worker")), clock=clock)
    fleet.observe(presence("w", started_at=100.0, seq=40))
    entry = fleet.get("w")
    assert entry is not None and entry.incarnation == 100.0
    fleet.observe(presence("w", started_at=200.0, seq=1))  # restarted: its sequence starts over
    assert entry.incarnation == 200.0 and entry.presence.seq == 1
    fleet.observe(presence("w", started_at=100.0, seq=41))  # a late beat of the dead run
    assert entry.incarnation == 200.0


# ---- revoked keys --------------------------------------------------------------------------------


def test_a_denied_worker_key_gets_no_more_jobs_at_once() -> None:
    ident = Identity.generate("worker")
    verifier = Verifier(allowed=[ident.public_key], role="worker")
    fleet = _signed_fleet(verifier, ident)
    placement = AffinityPlacement(fleet, rng=random.Random(0))
    choice = placement.choose(NEEDS, inflight={})
    assert choice is not None and choice.worker_id == ident.node_id
    verifier.deny(ident.public_key)
    assert placement.choose(NEEDS, inflight={}) is None
    assert fleet.candidates("m", "1") == []


def test_a_deny_entry_in_the_trust_bucket_stops_placement() -> None:
    ident = Identity.generate("worker")
    verifier = Verifier(allowed=[ident.public_key], role="worker")
    fleet = _signed_fleet(verifier, ident)
    placement = AffinityPlacement(fleet, rng=random.Random(0))
    verifier.trust.apply_kv(kv_key("deny", ident.public_key), True)
    assert placement.choose(NEEDS, inflight={}) is None
    verifier.trust.apply_kv(kv_key("deny", ident.public_key), False)  # the deny withdrawn
    choice = placement.choose(NEEDS, inflight={})
    assert choice is not None and choice.worker_id == ident.node_id


def test_a_key_dropped_from_the_allowlist_file_or_its_role_stops_placement(tmp_path: Path) -> None:
    ident, other = Identity.generate("worker"), Identity.generate("worker")
    path = tmp_path / "allowlist"
    path.write_text(allowlist_line(ident.public_key, ["worker"]))
    verifier = Verifier(trust=TrustStore(path), role="worker")
    fleet = _signed_fleet(verifier, ident)
    placement = AffinityPlacement(fleet, rng=random.Random(0))
    assert placement.choose(NEEDS, inflight={}) is not None
    path.write_text(allowlist_line(ident.public_key, ["scheduler"]))  # no longer a worker
    assert verifier.reload()
    choice = placement.choose(NEEDS, inflight={})
    assert choice is None
    path.write_text(allowlist_line(other.public_key, ["worker"]))  # gone from the file
    assert verifier.reload()
    assert placement.choose(NEEDS, inflight={}) is None


# ---- churn ---------------------------------------------------------------------------------------


def test_forgotten_workers_leave_no_announcements_or_tier_decisions_behind() -> None:
    clock = Clock(0.0)
    verifier = Verifier(role="worker", allow_all=True)  # envelopes on the wall clock, the view on `clock`
    fleet = FleetView(heartbeat_s=5.0, gate=PresenceGate(verifier), clock=clock)
    placement = AffinityPlacement(fleet, rng=random.Random(0))
    for _ in range(30):
        clock.t += 1.0
        ident = Identity.generate("worker")
        wid = ident.node_id
        ann = ModelAnnouncement(
            worker_id=wid, model_id="m", version="1", region="eu", task="echo", state=ModelState.WARM, ts=clock.t
        )
        assert fleet.accept("tether.models.m.1.eu", seal_message(ident, ann, PURPOSE_MODEL))
        fleet.observe(presence(wid, gflops=100.0, max_alloc_mb=4000.0))
        assert placement.choose(NEEDS, inflight={}) is not None
    assert len(fleet.announcements) == 30
    clock.t += (fleet.forget_after + 1) * fleet.heartbeat_s + 30
    fleet.sweep()
    assert fleet.workers() == []
    assert fleet.announcements == {}
    assert placement._tiers == {}  # the tier decisions of forgotten workers went with them
    assert fleet.knows_model("m", "1")  # the model stays known: jobs for it wait rather than fail


def test_health_ignores_steps_of_the_wall_clock_and_replays_keep_their_age() -> None:
    mono, wall = Clock(500.0), Clock(1_700_000_000.0)
    fleet = FleetView(heartbeat_s=1.0, gate=PresenceGate(Verifier([], role="worker")), clock=mono, wall=wall)
    fleet.observe(presence("w-live"))
    wall.t -= 60.0  # the wall clock steps back a minute: the worker still ages in real time
    mono.t += 3.5
    assert fleet.health(fleet.get("w-live")) is Health.OFFLINE  # type: ignore[arg-type]
    fleet.observe(presence("w-live", seq=2))
    wall.t += 3600.0  # and forward an hour: a worker heard just now is not OFFLINE
    assert fleet.health(fleet.get("w-live")) is Health.HEALTHY  # type: ignore[arg-type]
    # a heartbeat replayed from the stream, stored 2.5 s ago by the wall clock, is 2.5 s old here
    fleet.observe(presence("w-replayed"), seen_at=wall.t - 2.5)
    entry = fleet.get("w-replayed")
    assert entry is not None and fleet.health(entry) is Health.SUSPECT
    assert abs(fleet.wall_time(entry.last_seen) - (wall.t - 2.5)) < 1e-6
