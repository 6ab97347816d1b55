"""The scheduler: takes jobs from JOBS, reserves capacity, dispatches, watches, retries, finishes.

Any number of schedulers share the durable consumer ``schedulers`` on JOBS.
A job's JetStream message stays unacknowledged while the job runs (kept alive
with ``in_progress``), so a scheduler killed mid-job simply lets JetStream hand
the job to another scheduler, which finds the job's row, waits out the dead
scheduler's lease, and carries on from the next attempt. The message is
acknowledged only after the final result is in RESULTS and the final state in
the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter
from enum import StrEnum

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.scheduler import handover, outcomes
from services.scheduler.accounting import account, clients_deadline
from services.scheduler.advisories import MaxDeliveries
from services.scheduler.attempts import (
    AttemptRunner,
    WorkerRefused,
    execution_budget,
    retry_backoff,
)
from services.scheduler.breakers import BreakerBoard, BreakerKey, BreakerPolicy
from services.scheduler.cancels import JobCancels
from services.scheduler.dispatch import Dispatcher
from services.scheduler.handover import LostLease, Requeue
from services.scheduler.held import HeldJobs
from services.scheduler.intake import Ticket, read_ticket
from services.scheduler.monitor import FleetMonitor
from services.scheduler.placement import Placement
from services.scheduler.progress import StreamProgress
from services.scheduler.pull import PullConsumer
from services.scheduler.reliability import Reliability
from services.scheduler.scoring import AffinityPlacement, JobNeeds, Weights
from streams import JOBS, SCHEDULER_CONSUMER, apply, topology
from streams.kv import RESUME_BUCKET, apply_kv, kv_buckets, resume_bucket
from tether import telemetry
from tether.connection import connect, drain_and_close
from tether.dispatch_auth import DispatchSigner
from tether.errors import Cancelled, ModelUnknown, NoCapacity, TetherError, Timeout
from tether.fleet import FleetView
from tether.results import fetch_final
from tether.security import node_identity
from tether.settings import Settings
from tether.store import JobStatus, JobStore, open_store
from tether.store.fleetstate import FleetState
from tether.tasks import TaskGroup, closing_on_failure, settle_heap

log = logging.getLogger(__name__)


class SchedulerState(StrEnum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        *,
        scheduler_id: str | None = None,
        store: JobStore | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.settings = settings
        self.scheduler_id = scheduler_id or f"s-{os.urandom(6).hex()}"
        self.store = store or open_store(settings.store_url)
        self.fleet = FleetView.from_settings(settings)
        self.reliability = Reliability(half_life_s=settings.reliability_half_life_s)
        self.monitor: FleetMonitor | None = None
        self.breakers = BreakerBoard(
            BreakerPolicy(settings.breaker_threshold, settings.breaker_window_s, settings.breaker_open_s),
            on_transition=lambda t: self.monitor.on_breaker(t) if self.monitor else None,
        )
        self.placement: Placement = placement or AffinityPlacement(
            self.fleet,
            weights=Weights.parse(settings.placement_weights),
            sample=settings.placement_sample,
            reliability=self.reliability.score,
            rtt=lambda w: self.dispatcher.rtt(w) if self.dispatcher else None,
            breaker_allows=lambda m, v, r: self.breakers.allows((m, v, r)),
        )
        self._advisories: MaxDeliveries | None = None
        self.state = SchedulerState.NEW
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._own_nc = False
        self._tasks = TaskGroup(f"scheduler:{self.scheduler_id}")
        self._jobs = TaskGroup(f"scheduler-jobs:{self.scheduler_id}")
        self.held = HeldJobs(self.store, self.scheduler_id, settings.job_lease_s)
        self.cancels = JobCancels(settings.queue_wait_s + settings.job_lease_s + 60.0)  # as long as a job waits
        self.dispatcher: Dispatcher | None = None
        self.attempts: AttemptRunner | None = None
        self._puller: PullConsumer | None = None
        self._started = 0.0
        self.stats: Counter[str] = Counter()

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self, nc: Client | None = None) -> None:
        """Connect (unless given ``nc``), declare what it needs, subscribe; a start that fails half-way
        closes what it had opened before the error propagates."""
        if self.state is not SchedulerState.NEW:
            raise RuntimeError(f"scheduler already {self.state}")
        await closing_on_failure(self._start(nc), self.close)

    async def _start(self, nc: Client | None) -> None:
        await self.store.open()
        if nc is None:
            nc = await connect(self.settings.url, name=f"tether-scheduler-{self.scheduler_id}")
            self._own_nc = True
        self.nc, self.js = nc, nc.jetstream()
        await apply(self.js, topology(self.settings, nc._server_info), update=True)
        buckets = (*kv_buckets(self.settings, nc._server_info), resume_bucket(self.settings, nc._server_info))
        await apply_kv(self.js, buckets, update=True)  # its settings own retention, as for the streams
        signer = DispatchSigner(node_identity(self.settings, "scheduler"))
        self.dispatcher = Dispatcher(nc, self.scheduler_id, signer, self._worker_key)
        await self.dispatcher.start()
        keep_s = self.settings.queue_wait_s + self.settings.job_lease_s  # a parked job's resume prefix
        self.attempts = AttemptRunner(
            settings=self.settings,
            store=self.store,
            js=self.js,
            dispatcher=self.dispatcher,
            fleet=self.fleet,
            scheduler_id=self.scheduler_id,
            stats=self.stats,
            progress=StreamProgress(nc, self.fleet, keep_s=keep_s, kv=await self.js.key_value(RESUME_BUCKET)),
            nc=nc,
        )
        self.monitor = FleetMonitor(
            nc=nc,
            fleet=self.fleet,
            state=FleetState(self.store),
            reliability=self.reliability,
            breakers=self.breakers,
            scheduler_id=self.scheduler_id,
        )
        await self.monitor.load()
        self._advisories = MaxDeliveries(nc, self.js, self.store, self.settings)
        await self._advisories.start()
        await self.fleet.start(nc, self.js)
        await self.cancels.start(nc)
        self._started = time.time()
        self.state = SchedulerState.RUNNING
        self._tasks.spawn(self.dispatcher.run(), name="dispatch")
        self._tasks.spawn(self.monitor.run(), name="monitor")
        self._tasks.spawn(self._consume(), name="consume")
        self._tasks.spawn(self.held.keep_alive(), name="keepalive")
        settle_heap()
        log.info(
            "scheduler started", extra={"scheduler": self.scheduler_id, "workers": len(self.fleet.workers())}
        )

    def _worker_key(self, worker_id: str) -> bytes | None:
        """The public key that signs ``worker_id``'s heartbeats (None: not known, or unsigned)."""
        entry = self.fleet.get(worker_id)
        return entry.signer if entry is not None else None

    async def drain(self, grace_s: float = 30.0) -> None:
        """Stop taking jobs, let in-flight ones finish within ``grace_s``, hand back the rest."""
        if self.state is not SchedulerState.RUNNING:
            return
        self.state = SchedulerState.DRAINING
        if self._puller is not None:
            self._puller.wake()
        if not await self._jobs.wait(grace_s):
            log.warning("drain grace expired; handing jobs back", extra={"left": len(self._jobs)})
        await self.close()

    async def close(self) -> None:
        if self.state is SchedulerState.STOPPED:
            return
        self.state = SchedulerState.STOPPED
        try:
            await self._tasks.close()
            with contextlib.suppress(Exception):
                await self.cancels.stop()
            if self._advisories is not None:  # first: the hand-back's advisories go to a scheduler that stays
                await self._advisories.stop()
            held = self.held.snapshot()  # before the cancelled handlers forget their jobs
            await self._jobs.close()
            await self.held.hand_back(*held)  # not finished: another scheduler may take them now
            if self.dispatcher is not None:
                await self.dispatcher.stop()
            if self.monitor is not None:
                await self.monitor.persist()
            await self.fleet.stop()
            if self.nc is not None and self._own_nc:
                await drain_and_close(self.nc)
        finally:  # cut short (an error, a timeout): its reader thread would keep the process alive
            await self.store.close()
        log.info("scheduler stopped", extra={"scheduler": self.scheduler_id, **self.stats})

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the consumer loop --------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self.nc is not None
        self._puller = PullConsumer(
            self.nc,
            stream=JOBS,
            durable=SCHEDULER_CONSUMER,
            handler=lambda msg: self._jobs.spawn(self._handle(msg), name="job"),
            room=lambda: self.settings.max_inflight - len(self._jobs),
            batch=self.settings.scheduler_batch,
        )
        await self._puller.run(lambda: self.state is SchedulerState.RUNNING)

    async def _handle(self, msg: Msg) -> None:
        ticket = read_ticket(msg, self.settings)
        if not self.held.take(ticket.job_id, msg):
            return  # already running here: this delivery shares that handling's outcome
        handed_back = False
        try:
            with telemetry.span("scheduler.job", ticket.headers, job_id=ticket.job_id):
                await self._run_job(ticket)
            await self.held.ack(ticket.job_id)
        except Requeue as rq:
            handed_back = True
            await self.held.nak(ticket.job_id, rq.delay)
        except LostLease:  # another scheduler took the job over: its delivery, its outcome
            self.stats["lost_lease"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Store or NATS trouble: the job is not lost, JetStream redelivers it.
            log.exception("job handling failed; will be redelivered", extra={"job": ticket.job_id})
            self.stats["handler_errors"] += 1
            await self.held.nak(ticket.job_id, 1.0 + random.random())
            del exc
        finally:
            self.held.forget(ticket.job_id)
            if self.attempts is not None:
                await self.attempts.job_left(ticket.job_id, handed_back=handed_back)
            if self._puller is not None:
                self._puller.poke()

    # ---- one job ------------------------------------------------------------------------------

    async def _run_job(self, t: Ticket) -> None:
        if t.error is not None:
            await self._finish_error(t, JobStatus.FAILED, t.error, attempts=0)
            return
        key, sub = t.key, t.submission
        assert sub is not None
        if t.deliveries > 1 and self.js is not None:  # its last holder may have died after it finished
            stored = await fetch_final(self.js, t.job_id)
            if stored is not None:
                await outcomes.record_final(self.store, t, stored, stored.attempts or 1)
                return
            given_up = await handover.wait_for_open_attempt(self.store, self.settings, t.job_id, self.fleet.alive)
            if given_up is not None and self.attempts is not None:  # a zombie must not finish it too
                await self.attempts.cancel(t.job_id, given_up[0], "taken over: its scheduler stopped")
            used_up = await handover.attempts_used_up(self.store, self.settings, t.job_id, self.scheduler_id)
            if used_up is not None:
                await self._dead_letter(t, *used_up)
                return
        if not self.fleet.knows_model(key.model_id, key.version) and self._past_grace():
            await self._finish_error(
                t,
                JobStatus.FAILED,
                ModelUnknown(
                    f"modelId {key.model_id!r} version {key.version!r} is not served by any worker",
                    field="modelId",
                ),
                attempts=0,
            )
            return
        avoid: set[str] = set()
        refused: set[str] = set()  # workers that refused it for capacity: no attempt is spent on them
        params = sub.params
        needs = JobNeeds(
            key.model_id,
            key.version,
            region=(params.region if params and params.region else self.settings.region),
            device_class=params.device_class if params else None,
            min_tier=params.min_tier if params else None,
        )
        while True:
            assert self.attempts is not None
            if (reason := self.cancels.reason_for(t.job_id)) is not None:  # cancelled while it waited
                spent = handover.spent(await self.store.attempts(t.job_id))
                cancelled = Cancelled(f"job {t.job_id} cancelled: {reason}", job_id=t.job_id)
                await self._finish_error(t, JobStatus.FAILED, cancelled, attempts=spent)
                return
            choice = self.placement.choose(needs, inflight=self.attempts.inflight_by_worker, avoid=avoid)
            if choice is None or choice.worker_id in refused:
                await self._wait_for_capacity(t)  # final no_capacity error, or Requeue
                return
            worker = self.fleet.get(choice.worker_id)
            breaker: BreakerKey = (
                key.model_id, key.version, worker.presence.region if worker else self.settings.region
            )
            with self.breakers.attempt(breaker) as ticket:  # before any await: the probe is ours or not
                if ticket is None:  # choose() saw it allowed just now: cannot happen, but never loop
                    await self._wait_for_capacity(t)
                    return
                now = time.time()
                exec_timeout = execution_budget(self.settings, t)
                attempt = await self.store.reserve(
                    key,
                    scheduler_id=self.scheduler_id,
                    worker_id=choice.worker_id,
                    placement=choice.explanation,
                    lease_until=now + self.settings.job_lease_s,
                    expires_at=now + self.settings.dispatch_ack_s + exec_timeout,
                    now=now,
                )
                if attempt is None:
                    await handover.not_ours(self.store, t.job_id)
                    return
                if attempt - len(refused) > self.settings.max_attempts:
                    err = await handover.over_budget(self.store, self.settings, t.job_id, attempt)
                    if err is not None:  # the attempt just closed unused is not one it had
                        await self._dead_letter(t, handover.spent(await self.store.attempts(t.job_id)) - 1, err)
                        return
                err = await self.attempts.run(t, choice.worker_id, attempt, exec_timeout)
                clients_time = clients_deadline(self.settings, t)
                account(self.breakers, self.reliability, ticket, choice.worker_id, err, clients_time=clients_time)
            if err is None:
                return
            avoid.add(choice.worker_id)
            if isinstance(err, WorkerRefused):
                refused.add(choice.worker_id)
                continue  # another worker, or back to JOBS to wait for capacity
            if not err.retryable or (isinstance(err, Timeout) and clients_time):  # its own deadline is spent
                spent = handover.spent(await self.store.attempts(t.job_id))  # refusals, of any delivery, spent none
                await self._finish_error(t, JobStatus.FAILED, err, attempts=spent, worker_id=choice.worker_id)
                return
            if attempt - len(refused) >= self.settings.max_attempts:
                spent = handover.spent(await self.store.attempts(t.job_id))  # refusals spent none
                if spent >= self.settings.max_attempts:
                    await self._dead_letter(t, spent, err)
                    return
            self.stats["retries"] += 1
            await asyncio.sleep(retry_backoff(attempt))

    # ---- outcomes -----------------------------------------------------------------------------

    async def _wait_for_capacity(self, t: Ticket) -> None:
        history = await self.store.attempts(t.job_id)
        waited = time.time() - handover.capacity_wait_since(t.enqueued_at or time.time(), history)
        if waited > self.settings.queue_wait_s:
            await self._finish_error(
                t,
                JobStatus.FAILED,
                NoCapacity(
                    f"no worker could take model {t.key.model_id!r} within {self.settings.queue_wait_s:.0f}s"
                    + handover.last_refusal(history),  # why the workers that were tried said no
                    retry_after_s=self.settings.heartbeat_s,  # a worker may announce itself within one beat
                ),
                attempts=handover.spent(history),
            )
            return
        await self.store.enqueue(t.key, time.time(), release_for=self.scheduler_id)  # others may take it
        self.stats["requeued"] += 1
        raise Requeue(handover.capacity_wait_delay(waited, self.settings))

    async def _finish_error(
        self, t: Ticket, status: JobStatus, err: TetherError, *, attempts: int, worker_id: str | None = None
    ) -> None:
        assert self.js is not None
        if attempts:
            await handover.raise_if_taken_over(self.store, t.job_id, self.scheduler_id)
        await outcomes.finish_error(
            self.js, self.store, t, status, err, attempts=attempts, worker_id=worker_id
        )
        self.stats[str(status).lower()] += 1

    async def _dead_letter(self, t: Ticket, attempts: int, last: TetherError) -> None:
        assert self.js is not None
        await handover.raise_if_taken_over(self.store, t.job_id, self.scheduler_id)
        await outcomes.dead_letter(self.js, self.store, t, attempts, last)
        self.stats["dead_lettered"] += 1

    # ---- helpers ------------------------------------------------------------------------------

    def _past_grace(self) -> bool:
        return time.time() - self._started > 3 * self.settings.heartbeat_s

