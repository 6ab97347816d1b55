"""Load for fault tests: a ledger of every final result and a batch driver with test-owned job ids.

``Ledger`` counts the final results per job id two ways: what a core
subscriber on ``tether.results.*`` received from the start (what ``nats sub``
prints), and, once the batch is over, every message stored in RESULTS read
by stream sequence from the first (what any JetStream consumer replaying it
gets). Either count above one for a job id is a client seeing two final
results; a stored count of zero for an accepted job is a lost job.

``Batch`` submits jobs in a closed loop at a fixed concurrency (each task
submits one job and waits for its final result before the next): by bare
JetStream publish into JOBS (``jobId`` and ``Nats-Msg-Id`` are the test's
ids; a publish is retried until JetStream acknowledges it, so every job is
accepted exactly once) or by ``tether.infer`` with an idempotency key (a
request that times out or errors is retried with the same key).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from schemas import ResultMessage
from streams import JOBS, RESULTS
from tests.fault_report import Report
from tether import client, codec, subjects, telemetry
from tether.errors import TetherError
from tether.jobids import idempotent_job_id
from tether.results import fetch_final


class Ledger:
    """Final results per job id: what a core subscriber got, and (``scan()``) what RESULTS stores.

    The core subscription is also how the load driver learns a job finished; a
    message it missed while nats-server was down is made up for by looking the
    job up in RESULTS every second (``fetch_final``).
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=5.0)
        self.core: Counter[str] = Counter()
        self.stored: dict[str, list[tuple[int, ResultMessage]]] = {}  # job id -> (stream seq, result)
        self.done: set[str] = set()
        self._changed = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.RESULTS_ALL, cb=self._on_core)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def first(self, job_id: str) -> ResultMessage | None:
        got = self.stored.get(job_id)
        return got[0][1] if got else None

    async def wait(self, job_id: str, timeout: float) -> bool:
        """Until ``job_id`` has a final result (seen on core NATS, or found in RESULTS)."""
        deadline = time.monotonic() + timeout
        while job_id not in self.done:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 1.0))
            if job_id not in self.done:
                with contextlib.suppress(NatsError, TimeoutError, OSError):
                    if await fetch_final(self.js, job_id) is not None:
                        self.done.add(job_id)
        return True

    async def scan(self) -> None:
        """Read RESULTS whole, by stream sequence: every stored final result, counted once each."""
        info = await self.js.stream_info(RESULTS)
        stored: dict[str, list[tuple[int, ResultMessage]]] = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                raw = await self.js.get_msg(RESULTS, seq, direct=True)
            except NotFoundError:
                continue
            assert raw.subject is not None and raw.data is not None
            result = ResultMessage.model_validate(codec.decode(raw.data, codec.content_type_of(raw.headers)))
            stored.setdefault(subjects.job_id_from_result_subject(raw.subject), []).append((seq, result))
        self.stored = stored

    async def _on_core(self, msg: Msg) -> None:
        with contextlib.suppress(TetherError):
            job_id = subjects.job_id_from_result_subject(msg.subject)
            self.core[job_id] += 1
            self.done.add(job_id)
            self._changed.set()


@dataclass(slots=True)
class Job:
    job_id: str
    input: str
    key: str = ""  # idempotency key (tether.infer path)


class Batch:
    """``jobs`` jobs at ``concurrency``; ``via`` is "jetstream" (bare publish) or "infer" (gateway)."""

    def __init__(
        self,
        nc: Client,
        ledger: Ledger,
        *,
        rows: Callable[[list[str]], dict[str, dict[str, Any]]],
        jobs: int = 300,
        concurrency: int = 20,
        via: str = "jetstream",
        model: str = "echo",
        version: str = "1",
        tenant: str = "faults",
        make_input: Callable[[int], str] = lambda i: f"input-{i}",
        job_timeout: float = 90.0,
        request_timeout: float = 5.0,
        prefix: str | None = None,
    ) -> None:
        if via not in ("jetstream", "infer"):
            raise ValueError(f"via must be jetstream or infer, not {via!r}")
        self.nc, self.ledger, self.rows = nc, ledger, rows
        self.js = nc.jetstream(timeout=5.0)
        self.concurrency, self.via = concurrency, via
        self.model, self.version, self.tenant = model, version, tenant
        self.job_timeout, self.request_timeout = job_timeout, request_timeout
        prefix = prefix or f"f{os.urandom(3).hex()}"
        self.jobs: list[Job] = []
        for i in range(jobs):
            key = f"{prefix}-{i:04d}"
            job_id = idempotent_job_id(tenant, key) if via == "infer" else key
            self.jobs.append(Job(job_id, make_input(i), key))
        self.accepted: set[str] = set()
        self.publish_retries = 0
        self.request_errors: dict[str, list[str]] = {}  # infer: failed requests per job
        self.done_without_client: set[str] = set()  # infer: finished while its client had no answer
        self.replies: dict[str, list[dict[str, Any]]] = {}
        self.faults: list[tuple[str, int, int]] = []  # (what, accepted, finished) when injected
        self._next = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    @property
    def ids(self) -> list[str]:
        return [j.job_id for j in self.jobs]

    def finished(self) -> int:
        return sum(1 for j in self.jobs if j.job_id in self.ledger.done)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._tasks = [asyncio.create_task(self._runner(), name=f"load-{i}") for i in range(self.concurrency)]

    async def reached(self, n: int, timeout: float = 60.0) -> None:
        """Until ``n`` jobs of the batch have a final result."""
        deadline = time.monotonic() + timeout
        while self.finished() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.finished()} of {n} jobs finished after {timeout:.0f}s")
            await asyncio.sleep(0.02)

    def mark_fault(self, what: str) -> None:
        """Note a fault about to be injected, with how many accepted jobs were still in flight."""
        self.faults.append((what, len(self.accepted), self.finished()))

    async def finish(self, timeout: float = 120.0, settle_s: float = 20.0) -> Report:
        """Wait for every job, then for the store rows to reach their final states; the report."""
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        elapsed = time.monotonic() - self._t0
        deadline = time.monotonic() + settle_s
        while True:
            await self.ledger.scan()
            report = Report.build(self, elapsed, self.rows(self.ids))
            if not (report.store_mismatch or report.lost) or time.monotonic() > deadline:
                return report
            # A final state is written just after its result; and nats-server hands a message to
            # core subscribers before the stream has stored it, so the last job's result can be
            # seen (and the batch over) a moment before RESULTS holds it. A lost job stays lost.
            await asyncio.sleep(0.5)

    # ---- one client task ----------------------------------------------------------------------

    async def _runner(self) -> None:
        while self._next < len(self.jobs):
            job = self.jobs[self._next]
            self._next += 1
            if self.via == "jetstream":
                await self._publish(job)
                await self.ledger.wait(job.job_id, self.job_timeout)
            else:
                await self._infer(job)

    async def _publish(self, job: Job) -> None:
        body = {"jobId": job.job_id, "input": job.input}
        headers = {**telemetry.child_headers(None), codec.CONTENT_TYPE: codec.JSON, "Nats-Msg-Id": job.job_id}
        subject = subjects.job_subject(self.tenant, self.model, self.version)
        deadline = time.monotonic() + self.job_timeout
        while True:
            try:
                await self.js.publish(subject, codec.encode(body), stream=JOBS, headers=headers)
            except (NatsError, TimeoutError, OSError):
                # Not acknowledged (the server is restarting?): the same id again is the same job.
                self.publish_retries += 1
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.2)
                continue
            self.accepted.add(job.job_id)
            return

    async def _infer(self, job: Job) -> None:
        self.accepted.add(job.job_id)  # the client insists until it has an answer
        deadline = time.monotonic() + self.job_timeout
        while time.monotonic() < deadline:
            try:
                reply = await client.infer(
                    self.nc,
                    model=self.model,
                    version=self.version,
                    tenant=self.tenant,
                    input=job.input,
                    idempotency_key=job.key,
                    timeout=self.request_timeout,
                )
            except (NatsError, TimeoutError, TetherError) as exc:
                self.request_errors.setdefault(job.job_id, []).append(type(exc).__name__)
                # The gateway that had it may be dead; the job should finish without us.
                if await self.ledger.wait(job.job_id, self.request_timeout):
                    self.done_without_client.add(job.job_id)
                continue
            self.replies.setdefault(job.job_id, []).append(reply)
            return
