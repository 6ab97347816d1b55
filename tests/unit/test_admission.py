"""Admission: the start-up benchmark measures something real; tiers follow the thresholds."""

from __future__ import annotations

import threading
import time

import pytest

from services.worker.admission import BenchmarkStopped, largest_allocation_mb, matmul_gflops, run_benchmark
from tether.tiers import TierThresholds, assign_tier, meets

T = TierThresholds(min_gflops=5, min_alloc_mb=256, tier2_gflops=500, tier3_gflops=5000, tier3_alloc_mb=8192)


def test_benchmark_reports_gflops_and_a_stable_allocation() -> None:
    result = run_benchmark("cpu", "float32", cap_mb=256)
    assert result.gflops > 0.1 and result.max_alloc_mb == 256.0
    assert (result.device, result.dtype) == ("cpu", "float32")
    assert result.seconds < 30


def test_gflops_scale_with_the_work_done() -> None:
    # A 64x smaller matmul has far less work per call: its figure must come out lower than the
    # large one's (Python overhead dominates it), which a constant or made-up figure would not.
    small = matmul_gflops("cpu", "float32", n=16, seconds=0.1)
    large = matmul_gflops("cpu", "float32", n=512, seconds=0.2)
    assert 0 < small < large


def test_allocation_probe_stops_at_the_cap() -> None:
    assert largest_allocation_mb("cpu", floor_mb=16, cap_mb=64) == 64.0
    assert largest_allocation_mb("cpu", floor_mb=16, cap_mb=8) == 0.0


def test_a_set_stop_event_ends_the_benchmark_without_figures() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(BenchmarkStopped):
        matmul_gflops("cpu", "float32", n=16, seconds=10.0, stop=stop)
    with pytest.raises(BenchmarkStopped):
        largest_allocation_mb("cpu", floor_mb=16, cap_mb=64, stop=stop)


def test_a_stop_set_while_the_allocation_probe_runs_ends_it_part_way() -> None:
    # 64 + 128 + ... + 1024 MB, every page written: far longer than the 50 ms before the stop
    stop, raised = threading.Event(), []

    def probe() -> None:
        try:
            largest_allocation_mb("cpu", floor_mb=64, cap_mb=1024, stop=stop)
        except BenchmarkStopped as exc:
            raised.append(exc)

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.05)
    stop.set()
    thread.join(30)
    assert raised, "the probe ran to its end instead of stopping"


@pytest.mark.parametrize(
    ("gflops", "alloc", "tier"),
    [
        (20.0, 1024.0, 1),
        (499.9, 1024.0, 1),
        (500.0, 1024.0, 2),
        (9000.0, 4096.0, 2),  # fast, but not enough stable memory for tier 3
        (9000.0, 16384.0, 3),
        (None, None, 1),  # no benchmark reported
    ],
)
def test_tiers_by_threshold(gflops: float | None, alloc: float | None, tier: int) -> None:
    decision = assign_tier(gflops, alloc, T)
    assert decision.admitted and decision.tier == tier, decision


@pytest.mark.parametrize(("gflops", "alloc", "word"), [(4.0, 1024.0, "GFLOPS"), (100.0, 128.0, "allocation")])
def test_workers_under_the_minimum_are_rejected_with_a_reason(gflops: float, alloc: float, word: str) -> None:
    decision = assign_tier(gflops, alloc, T)
    assert not decision.admitted and decision.tier is None
    assert "rejected" in decision.reason and word in decision.reason


def test_a_job_minimum_tier() -> None:
    tier1, tier3 = assign_tier(20.0, 1024.0, T), assign_tier(9000.0, 16384.0, T)
    rejected = assign_tier(1.0, 1024.0, T)
    assert meets(tier1, None) and meets(tier1, 1) and not meets(tier1, 2)
    assert meets(tier3, 3) and meets(tier3, 2)
    assert not meets(rejected, None)


def test_thresholds_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_TIER2_GFLOPS", "10")
    monkeypatch.setenv("TETHER_TIER_MIN_GFLOPS", "2.5")
    t = TierThresholds.from_env()
    assert (t.tier2_gflops, t.min_gflops, t.tier3_gflops) == (10.0, 2.5, TierThresholds().tier3_gflops)
    assert assign_tier(20.0, 1024.0, t).tier == 2
