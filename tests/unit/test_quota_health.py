"""QuotaGuard refusals and HealthReporter readings."""

from __future__ import annotations

import sys
import types

import psutil
import pytest

from services.worker.health import HealthReporter
from services.worker.quota_guard import QuotaGuard
from tether.errors import NoCapacity


def test_per_tenant_limit_refuses_with_retryable_no_capacity() -> None:
    guard = QuotaGuard(per_tenant=2)
    guard.acquire("acme")
    assert guard.check("acme") is None
    guard.acquire("acme")
    refusal = guard.check("acme")
    assert isinstance(refusal, NoCapacity) and refusal.retryable and refusal.code == "no_capacity"
    assert "acme" in refusal.message and "2" in refusal.message
    assert guard.check("other") is None  # other tenants are unaffected
    guard.release("acme")
    assert guard.check("acme") is None
    assert guard.refused == 1


def test_queue_depth_threshold() -> None:
    guard = QuotaGuard(max_queue=3)
    for tenant in ("a", "b", "c"):
        assert guard.check(tenant) is None
        guard.acquire(tenant)
    refusal = guard.check("d")
    assert refusal is not None and "queue" in refusal.message
    assert guard.check("d", queue_depth=1) is None  # the caller's own depth figure wins
    with guard.hold("z"):
        assert guard.held("z") == 1
    assert guard.held("z") == 0 and guard.depth == 3


def test_zero_means_no_limit_and_negative_is_an_error() -> None:
    guard = QuotaGuard()
    for _ in range(1000):
        guard.acquire("t")
    assert guard.check("t") is None
    with pytest.raises(ValueError):
        QuotaGuard(per_tenant=-1)


def test_health_sample_reads_this_process() -> None:
    reporter = HealthReporter()
    try:
        sample = reporter.sample()
        rss = psutil.Process().memory_info().rss / (1024 * 1024)
        assert 0.5 * rss < sample.rss_mb < 2 * rss
        assert 0 <= sample.cpu_percent <= 100 * psutil.cpu_count() and 0 < sample.mem_percent < 100
        if not reporter.has_gpu:
            assert (sample.gpu_mem_used_mb, sample.gpu_mem_total_mb, sample.gpu_util_percent) == (None, None, None)
        else:
            assert sample.gpu_mem_total_mb and sample.gpu_mem_total_mb > 0
    finally:
        reporter.close()


def test_a_failing_torch_gpu_read_is_a_missing_reading_not_a_failed_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(_index: int) -> tuple[int, int]:
        raise RuntimeError("CUDA error: unspecified launch failure")

    fake = types.ModuleType("torch")
    fake.cuda = types.SimpleNamespace(mem_get_info=broken)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    reporter = HealthReporter()
    reporter._nvml, reporter._torch_cuda = None, True  # the torch path, as on a host without pynvml
    sample = reporter.sample()
    assert (sample.gpu_mem_used_mb, sample.gpu_mem_total_mb) == (None, None)
    assert sample.rss_mb > 0
