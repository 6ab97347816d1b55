"""A job ended from its stored result (a lost report, a redelivery after it finished) keeps its times."""

from __future__ import annotations

from pathlib import Path

from schemas import ResultMessage
from services.scheduler.intake import Ticket
from services.scheduler.outcomes import record_final
from tether.store import JobKey, JobStore, open_store

T0 = 1_800_000_000.0


async def test_a_job_recorded_from_its_stored_result_gets_the_workers_start_time(tmp_path: Path) -> None:
    store: JobStore = open_store(f"sqlite:///{tmp_path / 'tether.db'}")
    await store.open()
    try:
        key = JobKey(
            job_id="j-1", tenant_id="t", model_id="echo", version="1", correlation_id="j-1",
            idempotency_key=None, created_at=T0,
        )
        assert await store.reserve(key, scheduler_id="s", worker_id="w", placement={}, lease_until=T0 + 30,
                                   expires_at=T0 + 60, now=T0 + 1) == 1
        stored = ResultMessage.model_validate({
            "jobId": "j-1", "status": "completed", "tenantId": "t", "modelId": "echo", "version": "1",
            "result": "x", "workerId": "w", "attempts": 1, "startedAt": T0 + 2, "finishedAt": T0 + 3,
        })
        await record_final(store, Ticket(key, {}), stored, 1)  # RUNNING was never written: it was fast
        row = await store.get("j-1")
        assert row is not None and row["status"] == "COMPLETED" and row["started_at"] == T0 + 2
        [attempt] = await store.attempts("j-1")
        assert attempt["status"] == "COMPLETED" and attempt["started_at"] == T0 + 2
    finally:
        await store.close()


async def test_a_scheduler_whose_job_was_taken_over_does_not_end_it_with_an_error(tmp_path: Path) -> None:
    """Scheduler A's lease lapsed while it was busy; B took the job over and runs attempt 2. A's late
    failure of attempt 1 must not end the job under B."""
    import time

    import pytest

    from services.scheduler.handover import LostLease, raise_if_taken_over
    from tether.store import JobStatus

    store: JobStore = open_store(f"sqlite:///{tmp_path / 'tether.db'}")
    await store.open()
    try:
        now = time.time()
        key = JobKey(
            job_id="j-2", tenant_id="t", model_id="echo", version="1", correlation_id="j-2",
            idempotency_key=None, created_at=now,
        )
        assert await store.reserve(key, scheduler_id="s-a", worker_id="w1", placement={}, lease_until=now - 1,
                                   expires_at=now + 60, now=now - 31) == 1  # A's lease has lapsed
        await raise_if_taken_over(store, "j-2", "s-a")  # nobody else holds it: A may still end it
        assert await store.reserve(key, scheduler_id="s-b", worker_id="w2", placement={}, lease_until=now + 30,
                                   expires_at=now + 60, now=now) == 2
        with pytest.raises(LostLease, match="s-b"):
            await raise_if_taken_over(store, "j-2", "s-a")
        await raise_if_taken_over(store, "j-2", "s-b")  # the holder may
        assert await store.finish(key, JobStatus.COMPLETED, now + 1, attempt=2, worker_id="w2")
        await raise_if_taken_over(store, "j-2", "s-a")  # a finished job raises nothing (its result stands)
    finally:
        await store.close()
