"""Handing a job back to JetStream, and taking over one another scheduler handed on.

``Requeue`` gives the job's message back (a delayed ``nak``), so JetStream
delivers it again later: to wait for capacity, for a live scheduler's lease, or
for an attempt that may still finish. ``attempts_used_up`` is the check a
redelivered job gets before a new attempt is reserved: a job whose earlier
holder used its last attempt is not dead-lettered while that attempt may still
succeed (its result, once stored, ends the job at the next delivery).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tether.errors import NoCapacity, WorkerFailed
from tether.settings import Settings
from tether.store import TERMINAL, JobStore

#: The first wait for capacity: a worker may free a slot at once.
FIRST_WAIT_S = 0.25


class Requeue(Exception):
    """Hand the job back to JetStream for redelivery after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay


def capacity_wait_delay(waited_s: float, settings: Settings) -> float:
    """How long a job waiting for capacity stays handed back before it is looked at again.

    Each hand-back is one of the JOBS consumer's ``max_deliver`` deliveries, so the whole of
    ``queue_wait_s`` is planned within a budget of three quarters of them (the rest stays for
    schedulers dying on the job): half the budget ramps the delay up geometrically from
    0.25 s (a worker may free a slot at once), the other half waits at the cap this leaves.
    Without a delivery cap (``max_deliver`` <= 0) the delay ramps to 2 s as it always did.
    """
    if settings.max_deliver <= 0:
        return min(2.0, 0.25 + waited_s / 10)
    budget = max(2, int(0.75 * settings.max_deliver) - 1)
    ramp = budget // 2
    cap = max(FIRST_WAIT_S, settings.queue_wait_s / (budget - ramp))
    growth = (cap / FIRST_WAIT_S) ** (1 / ramp)  # delay k of the ramp is 0.25 s * growth ** k
    return min(cap, FIRST_WAIT_S + waited_s * (growth - 1))


class LostLease(Exception):
    """Another scheduler holds the job now (this one's lease lapsed while it was busy): stop handling it."""


async def raise_if_taken_over(store: JobStore, job_id: str, scheduler_id: str) -> None:
    """Before a scheduler ends a job with an error: ``LostLease`` when another live scheduler holds it.

    A scheduler whose lease lapsed (its store writes stalled past ``job_lease_s``) may still hold
    an attempt's failure; meanwhile another took the job over and runs a newer attempt. The
    older one must not end the job under it (nor publish a final error the client would get).
    """
    row = await store.get(job_id)
    if row is None or row["status"] in TERMINAL or row["scheduler_id"] in (None, scheduler_id):
        return
    if float(row["lease_until"] or 0) > time.time():
        raise LostLease(f"job {job_id} is held by scheduler {row['scheduler_id']}")


async def not_ours(store: JobStore, job_id: str) -> None:
    """The reservation was refused: the job is finished, or another scheduler holds its lease.

    Returns for a finished job (its result is already in RESULTS); raises ``Requeue`` until the lease ends.
    """
    row = await store.get(job_id)
    if row is None or row["status"] in TERMINAL:
        return
    raise Requeue(max(1.0, float(row["lease_until"] or 0) - time.time()))


def spent(history: list[dict[str, Any]]) -> int:
    """How many attempts count against ``max_attempts``: all but those a worker refused for capacity."""
    return sum(1 for row in history if row["error_code"] != NoCapacity.code)


async def wait_for_open_attempt(
    store: JobStore, settings: Settings, job_id: str, alive: Callable[[str], bool]
) -> tuple[int, str] | None:
    """For a redelivered job: its last attempt may still be running on a live worker.

    A scheduler that died (or drained) left that attempt running; its result, once stored,
    ends the job at a later delivery. Starting another attempt now would run the job twice,
    so this raises ``Requeue`` while the attempt is open, within its expiry and its worker
    alive. Returns ``(attempt, worker)`` of an open attempt given up on (expired, or its
    worker gone), for the caller to cancel, else None.
    """
    history = await store.attempts(job_id)
    last = history[-1] if history else None
    if last is None or last["finished_at"] is not None:
        return None
    now = time.time()
    expires = float(last["expires_at"] or 0)
    if expires > now and alive(str(last["worker_id"])):
        # looked at again at the expiry, or sooner for a long one (each look is one delivery)
        raise Requeue(min(max(1.0, expires - now), max(settings.job_lease_s, 10.0)))
    return int(last["attempt"]), str(last["worker_id"])


def capacity_wait_since(enqueued_at: float, history: list[dict[str, Any]]) -> float:
    """When a job began waiting for capacity: stored, or its last spent attempt's end (a job whose
    worker died after a long run waits its full ``queue_wait_s`` for another, not what is left)."""
    ends = [float(a["finished_at"]) for a in history if a["finished_at"] and a["error_code"] != NoCapacity.code]
    return max([enqueued_at, *ends])


def last_refusal(history: list[dict[str, Any]]) -> str:
    """``"; the last worker tried said: ..."`` from the latest capacity refusal, or "" (none was tried)."""
    refusals = [a for a in history if a["error_code"] == NoCapacity.code and a["error_message"]]
    return f"; the last worker tried said: {refusals[-1]['error_message']}" if refusals else ""


async def attempts_used_up(
    store: JobStore, settings: Settings, job_id: str, scheduler_id: str
) -> tuple[int, WorkerFailed] | None:
    """For a redelivered job: ``(attempts, last error)`` when it must be dead-lettered now, else None.

    Raises ``Requeue`` while another live scheduler holds the job's lease, or while
    its last attempt is still open and within its expiry.
    """
    row = await store.get(job_id)
    if row is None or row["status"] in TERMINAL or int(row["attempts"] or 0) < settings.max_attempts:
        return None
    now = time.time()
    lease_until = float(row["lease_until"] or 0)
    if row["scheduler_id"] != scheduler_id and lease_until > now:
        raise Requeue(max(1.0, lease_until - now))
    history = await store.attempts(job_id)
    if spent(history) < settings.max_attempts:
        return None
    last = history[-1] if history else None
    if last is not None and last["finished_at"] is None and float(last["expires_at"] or 0) > now:
        raise Requeue(min(settings.job_lease_s, max(1.0, float(last["expires_at"]) - now)))
    why = f"; last: {last['error_code']}: {last['error_message']}" if last and last["error_code"] else ""
    return int(row["attempts"]), WorkerFailed(f"max attempts reached{why}")


async def over_budget(store: JobStore, settings: Settings, job_id: str, attempt: int) -> WorkerFailed | None:
    """Whether ``attempt``, just reserved, is one too many (refusals aside); if so it is closed, unused."""
    if spent(await store.attempts(job_id)) <= settings.max_attempts:
        return None
    err = WorkerFailed("max attempts reached")
    await store.fail_attempt(job_id, attempt, err.code, err.message, time.time())
    return err
