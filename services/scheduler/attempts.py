"""One attempt of a job: dispatch it to the chosen worker and wait for how it ends.

The worker must accept within ``dispatch_ack_s``; then the attempt runs until
the worker's report, the execution timeout, or the worker going OFFLINE (no
heartbeat for 3T), whichever comes first. A job still running after
``RUNNING_WRITE_DELAY_S`` gets its RUNNING state written; one that finishes
sooner gets its start time from the report, in the same transaction as its
final state. A report can be lost (sent as a connection died, e.g. across a
nats-server restart): while waiting, RESULTS is looked up after T, 2T, 4T, ...
and a stored result ends the wait. The outcome is ``None`` (finished: result
stored) or the error that the scheduler's retry loop acts on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from schemas import AttemptReport, CancelRequest, Dispatch, ErrorInfo, ResultMessage
from services.scheduler import outcomes
from services.scheduler.dispatch import Dispatcher
from services.scheduler.intake import Ticket
from services.scheduler.progress import StreamProgress
from tether import codec, subjects, telemetry
from tether.errors import NoCapacity, TetherError, Timeout, WorkerFailed, error_from_wire
from tether.fleet import FleetView, Health
from tether.results import fetch_final
from tether.settings import Settings
from tether.store import JobStatus, JobStore
from tether.tasks import wait_done

#: A job still running this long after dispatch gets its RUNNING state written at once.
RUNNING_WRITE_DELAY_S = 0.05


class WorkerUnreachable(WorkerFailed):
    """The worker itself failed the attempt (no ack, no heartbeat): a fact about the worker, not the model.

    It lowers the worker's reliability but does not count towards the model's circuit breaker.
    """


class WorkerOffline(WorkerUnreachable):
    """The worker running an attempt stopped heartbeating (OFFLINE after 3T): re-place the job."""


class WorkerRestarted(WorkerOffline):
    """The worker running an attempt restarted under the same id (a new incarnation): the attempt
    died with the earlier run, so the job is re-placed at once instead of at the execution timeout."""


class WorkerRefused(NoCapacity):
    """The worker refused the attempt (full, draining, over a tenant's share).

    It says nothing about the job, so it does not use up one of the job's attempts: the job
    goes to another worker, or waits in JOBS for capacity up to ``queue_wait_s``.
    """


class AttemptRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        js: JetStreamContext,
        dispatcher: Dispatcher,
        fleet: FleetView,
        scheduler_id: str,
        stats: Counter[str],
        progress: StreamProgress | None = None,
        nc: Client | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.js = js
        self.dispatcher = dispatcher
        self.fleet = fleet
        self.scheduler_id = scheduler_id
        self.stats = stats
        self.progress = progress
        self.nc = nc  # for CancelRequests to abandoned attempts
        self.inflight_by_worker: Counter[str] = Counter()

    async def run(
        self, t: Ticket, worker_id: str, attempt: int, exec_timeout: float
    ) -> TetherError | None:
        """Dispatch one attempt and wait for its outcome. None means the job is finished."""
        assert self.dispatcher is not None and t.submission is not None
        key = t.key
        resume = None
        if self.progress is not None and self.progress.streams(key.model_id, key.version):
            # before the dispatch: no chunk goes unseen
            await self.progress.watch(key.job_id, redelivered=t.deliveries > 1)
            resume = self.progress.prefix(key.job_id)
        d = Dispatch(
            job_id=key.job_id,
            attempt=attempt,
            retry_token=f"{key.job_id}#{attempt}",
            tenant_id=key.tenant_id,
            model_id=key.model_id,
            version=key.version,
            input=_wire_input(t.submission.input),
            params=t.submission.params.wire() if t.submission.params else {},
            report_to=self.dispatcher.report_to,
            scheduler_id=self.scheduler_id,
            deadline=time.time() + exec_timeout,
            trace=telemetry.child_headers(t.headers),
            resume=resume,
        )
        entry = self.fleet.get(worker_id)
        incarnation = entry.incarnation if entry is not None else None  # the run the job goes to
        watch = self.dispatcher.submit(worker_id, d)
        self.inflight_by_worker[worker_id] += 1
        try:
            if not await wait_done(watch.accepted, self.settings.dispatch_ack_s):
                err: TetherError = WorkerUnreachable(
                    f"worker {worker_id} did not accept the job within {self.settings.dispatch_ack_s:g}s"
                )
                await self.store.fail_attempt(key.job_id, attempt, err.code, err.message, time.time())
                # it may yet have started it: stop it, so the job does not run twice
                await self.cancel(key.job_id, attempt, "re-placed: the worker did not accept in time")
                return err
            ack = watch.accepted.result()
            if not ack.accepted:
                info = ack.error or ErrorInfo(code=NoCapacity.code, message="refused", retryable=True)
                err = WorkerRefused(f"worker {worker_id} refused: {info.message}")
                # one code for every refusal, as the loop counts them (none is a spent attempt); the
                # worker's own code (no_capacity, model_unknown) stays in the message
                why = info.message if info.code == NoCapacity.code else f"{info.code}: {info.message}"
                await self.store.fail_attempt(key.job_id, attempt, NoCapacity.code, why, time.time())
                return err
            try:
                report = await self._await_outcome(
                    watch.report, key.job_id, attempt, exec_timeout, worker_id, incarnation
                )
            except WorkerOffline as off:
                await self.store.fail_attempt(key.job_id, attempt, off.code, off.message, time.time())
                await self.cancel(key.job_id, attempt, f"re-placed: {off.message}")
                return off
            if isinstance(report, ResultMessage):  # its report was lost; its result is stored
                await outcomes.record_final(self.store, t, report, attempt)
                return None
            if report is None:
                stored = await fetch_final(self.js, key.job_id) if self.js else None
                if stored is not None:
                    await outcomes.record_final(self.store, t, stored, attempt)
                    return None
                err = Timeout(f"worker {worker_id} did not finish within {exec_timeout:g}s")
                await self.store.fail_attempt(key.job_id, attempt, err.code, err.message, time.time())
                await self.cancel(key.job_id, attempt, "re-placed: execution timeout")
                return err
            if report.ok:
                await self.store.finish(
                    key,
                    JobStatus.COMPLETED,
                    time.time(),
                    attempt=attempt,
                    worker_id=worker_id,
                    started_at=report.started_at,
                )
                self.stats["completed"] += 1
                return None
            info = report.error or ErrorInfo(code="worker_failed", message="unknown failure", retryable=True)
            failure = error_from_wire(info.wire())
            await self.store.fail_attempt(key.job_id, attempt, info.code, info.message, time.time())
            return failure
        finally:
            self.dispatcher.forget(key.job_id, attempt)
            self.inflight_by_worker[worker_id] -= 1
            if self.inflight_by_worker[worker_id] <= 0:
                del self.inflight_by_worker[worker_id]

    async def job_left(self, job_id: str, *, handed_back: bool) -> None:
        """The job is no longer handled here: ended, or ``handed_back`` to JetStream (it may return)."""
        if self.progress is not None:
            await (self.progress.park(job_id) if handed_back else self.progress.forget(job_id))

    async def cancel(self, job_id: str, attempt: int, reason: str) -> None:
        """Stop an abandoned attempt (if its worker still runs it) so it frees its slot."""
        if self.nc is None:
            return
        request = CancelRequest(job_id=job_id, attempt=attempt, reason=reason)
        try:
            await self.nc.publish(
                subjects.control_subject("cancel", job_id),
                codec.encode(request.wire()),
                headers={codec.CONTENT_TYPE: codec.JSON},
            )
        except Exception as exc:  # best effort: the attempt's result is deduplicated anyway
            self.stats["cancel_publish_failed"] += 1
            del exc

    async def _await_outcome(
        self,
        fut: asyncio.Future[AttemptReport],
        job_id: str,
        attempt: int,
        exec_timeout: float,
        worker_id: str,
        incarnation: float | None = None,
    ) -> AttemptReport | ResultMessage | None:
        """Wait for the worker's report; None on timeout, ``WorkerOffline`` when the worker goes OFFLINE,
        ``WorkerRestarted`` when it comes back as a run other than ``incarnation`` (the one dispatched to).

        RUNNING is written only when the job is still running after
        ``RUNNING_WRITE_DELAY_S``: a job that finishes sooner gets its start time
        from the report, in the same transaction as its final state.
        """
        if await wait_done(fut, RUNNING_WRITE_DELAY_S):
            return fut.result()
        await self.store.mark_running(job_id, attempt, time.time())
        deadline = time.monotonic() + max(0.0, exec_timeout - RUNNING_WRITE_DELAY_S)
        lookup_gap = self.settings.heartbeat_s
        lookup_at = time.monotonic() + lookup_gap
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if await wait_done(fut, min(left, self.settings.heartbeat_s)):
                return fut.result()
            entry = self.fleet.get(worker_id)
            if entry is None or self.fleet.health(entry) is Health.OFFLINE:
                raise WorkerOffline(f"worker {worker_id} went offline while running the job")
            if incarnation is not None and entry.incarnation != incarnation:
                raise WorkerRestarted(f"worker {worker_id} restarted while running the job")
            if time.monotonic() >= lookup_at:  # the report may have been lost: is the result stored?
                lookup_gap *= 2
                lookup_at = time.monotonic() + lookup_gap
                if (stored := await fetch_final(self.js, job_id)) is not None:
                    return stored



def _wire_input(value: Any) -> Any:
    """The submission's input as plain data (chat messages become dicts)."""
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return [m.model_dump(by_alias=True, exclude_none=True, mode="json") for m in value]
    return value


def model_budget(settings: Settings, t: Ticket) -> float:
    """How long the model may take for one attempt: base + per token of ``max_new_tokens``, within the cap."""
    params = t.submission.params if t.submission else None
    tokens = params.max_new_tokens if params and params.max_new_tokens else 64
    return min(settings.exec_timeout_cap_s, settings.exec_timeout_base_s + settings.exec_timeout_per_token_s * tokens)


def execution_budget(settings: Settings, t: Ticket) -> float:
    """How long one attempt may run: the model's budget, within the job's own timeout."""
    params = t.submission.params if t.submission else None
    budget = model_budget(settings, t)
    return min(budget, params.timeout_s) if params and params.timeout_s else budget


def retry_backoff(attempt: int) -> float:
    """Seconds before the next attempt: exponential from 0.1 s (capped at 5 s), with jitter in its upper half."""
    base = min(5.0, 0.1 * (2 ** (attempt - 1)))
    return base / 2 + random.random() * base / 2
