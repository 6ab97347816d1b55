"""FleetView.lost: when work placed on a worker can no longer finish (it went OFFLINE, or restarted)."""

from __future__ import annotations

from schemas import Presence
from tether.fleet import FleetView


def _presence(worker_id: str, *, started_at: float, seq: int, ts: float) -> Presence:
    return Presence(
        worker_id=worker_id,
        region="local",
        device_class="cpu",
        capacity=8,
        queue_depth=0,
        models=[],
        heartbeat_s=1.0,
        started_at=started_at,
        seq=seq,
        ts=ts,
    )


def test_a_worker_is_lost_once_offline_or_restarted() -> None:
    now = [1000.0]
    fleet = FleetView(heartbeat_s=1.0, clock=lambda: now[0])
    fleet.observe(_presence("w-a", started_at=900.0, seq=1, ts=now[0]))
    assert fleet.lost("w-a", 900.0) is None
    now[0] += 2.9  # SUSPECT: late, not yet given up on
    assert fleet.lost("w-a", 900.0) is None
    now[0] += 0.2  # past 3T: OFFLINE
    assert "OFFLINE" in (fleet.lost("w-a", 900.0) or "")

    fleet.observe(_presence("w-a", started_at=1003.0, seq=1, ts=now[0]))  # back, as a new process
    assert "restarted" in (fleet.lost("w-a", 900.0) or "")  # its old jobs are gone with the old process
    assert fleet.lost("w-a", 1003.0) is None
    assert fleet.lost("w-a", None) is None  # placed before any presence was known: only OFFLINE counts
    assert fleet.lost("w-unknown", 900.0) is None  # never heard of: nothing to conclude
