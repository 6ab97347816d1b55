"""The gateway's NATS entrypoint: ``tether.infer`` request/reply (queue group ``gateways``).

A request is validated (encoding, size, fields, model, limits), published once
into JOBS (``Nats-Msg-Id`` = job id, so a retried publish is not a second
job) and answered with the job's one final result, which arrives on
``tether.results.<job>``. The gateway keeps no state that matters: if it dies,
the job still completes and its result stays in RESULTS; a client retrying
with the same idempotency key gets that result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import ErrorInfo, ErrorReply, InferReply, InferRequest, JobSubmission, ResultMessage, parse
from services.gateway.admission import Admission, Admitted
from services.gateway.config import GatewayConfig
from services.gateway.enqueue import check_owner, idempotent_job, publish_job
from services.gateway.slis import Slis, publish_snapshots
from streams import apply, topology
from streams.kv import apply_kv, kv_buckets
from tether import codec, subjects, telemetry
from tether.connection import connect, drain_and_close, subscribe_inline
from tether.errors import NoCapacity, StoreError, TetherError, Timeout, Unauthorized, error_from_wire
from tether.fleet import FleetView
from tether.jetpub import JetPublisher
from tether.jobids import idempotent_job_id, new_job_id
from tether.limits import check_params, check_size
from tether.results import fetch_final
from tether.settings import Settings
from tether.tasks import TaskGroup, closing_on_failure, settle_heap

log = logging.getLogger(__name__)

QUEUE_GROUP = "gateways"


class WaitTimeout(Timeout):
    """This gateway stopped waiting for the result (the job continues): not a final result's ``timeout``."""
OnJob = Callable[[str], Awaitable[None]]


class Gateway:
    def __init__(
        self, settings: Settings, *, gateway_id: str | None = None, config: GatewayConfig | None = None
    ) -> None:
        self.settings = settings
        self.gateway_id = gateway_id or f"g-{os.urandom(6).hex()}"
        self.fleet = FleetView.from_settings(settings)
        self.config = config or GatewayConfig.from_env()
        self.admission = Admission(self.config, self.fleet)
        self.slis = Slis()
        self._background = TaskGroup(f"gateway-bg:{self.gateway_id}")
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._publisher: JetPublisher | None = None
        self._own_nc = False
        self._subs: list[Any] = []
        self._result_sub: Any = None
        self._pending: dict[str, list[asyncio.Future[ResultMessage]]] = {}
        self.stats: Counter[str] = Counter()
        self._closed = False
        self._requests = TaskGroup(f"gateway:{self.gateway_id}")

    async def start(self, nc: Client | None = None) -> None:
        """Connect (unless given ``nc``), declare what it needs, subscribe; a start that fails half-way
        closes what it had opened before the error propagates."""
        await closing_on_failure(self._start(nc), self.close)

    async def _start(self, nc: Client | None) -> None:
        if nc is None:
            nc = await connect(self.settings.url, name=f"tether-gateway-{self.gateway_id}")
            self._own_nc = True
        self.nc, self.js = nc, nc.jetstream()
        self._publisher = JetPublisher.of(nc)
        await apply(self.js, topology(self.settings, nc._server_info))
        await apply_kv(self.js, kv_buckets(self.settings, nc._server_info))
        await self.fleet.start(nc, self.js)
        await self.admission.start(self.js, nc)
        self._result_sub = await subscribe_inline(nc, subjects.RESULTS_ALL, self._on_result)
        for subject in (subjects.INFER, subjects.INFER_TENANT_ALL):
            self._subs.append(await subscribe_inline(nc, subject, self._on_infer, queue=QUEUE_GROUP))
        self._background.spawn(publish_snapshots(self.js, self.gateway_id, self.slis), name="slis")
        settle_heap()
        log.info("gateway started", extra={"gateway": self.gateway_id})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in self._subs:  # no new requests; the ones in flight keep receiving their results
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self._requests.wait(timeout=5.0)
        await self._requests.close()  # still waiting: each is answered with a timeout naming its job
        if self._result_sub is not None:
            with contextlib.suppress(Exception):
                await self._result_sub.unsubscribe()
        await self._background.close()
        await self.fleet.stop()
        await self.admission.canaries.stop()
        for futs in self._pending.values():
            for f in futs:
                f.cancel()
        if self.nc is not None and self._own_nc:
            await drain_and_close(self.nc)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- NATS request/reply -------------------------------------------------------------------

    def _on_infer(self, msg: Msg) -> None:
        # Called from the connection's read loop: answer each request in its own task.
        self._requests.spawn(self._answer(msg), name="infer")

    async def _answer(self, msg: Msg) -> None:
        ctype = codec.JSON
        try:
            ctype = codec.content_type_of(msg.headers)
            check_size(len(msg.data), self.settings)
            req = parse(InferRequest, tenant_from_subject(msg.subject, codec.decode(msg.data, ctype)))
            reply: dict[str, Any] = (await self.infer(req, dict(msg.headers or {}))).wire()
        except TetherError as exc:
            self.stats[f"error.{exc.code}"] += 1
            reply = ErrorReply(error=ErrorInfo.model_validate(exc.to_wire())).wire()
        except Exception as exc:  # never leave a client hanging
            log.exception("infer failed")
            reply = {
                "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}", "retryable": True}
            }
        if msg.reply:
            assert self.nc is not None
            with contextlib.suppress(Exception):
                await self.nc.publish(
                    msg.reply, codec.encode(reply, ctype), headers={codec.CONTENT_TYPE: ctype}
                )

    # ---- the one path every entrypoint uses ---------------------------------------------------

    async def infer(
        self, req: InferRequest, headers: dict[str, str] | None = None, *, on_job: OnJob | None = None
    ) -> InferReply:
        """Admit, enqueue once, and wait for the final result; ``on_job(job_id)`` runs before the publish
        (the HTTP gateway subscribes to the job's token chunks there)."""
        t0 = time.perf_counter()
        try:
            reply = await self._infer(req, headers, on_job, t0)
        except TetherError as exc:
            self.slis.record(self._sli_model(req), exc.code)
            raise
        except Exception:  # a crash is an outcome too: the success rate must not skip it
            self.slis.record(self._sli_model(req), "internal")
            raise
        cold = bool(reply.usage and reply.usage.cold_start)
        self.slis.record(reply.model_id, "ok", reply.latency_ms, cold=cold)
        return reply

    def _sli_model(self, req: InferRequest) -> str:
        """The model label of a failed request: a model no worker announced (any string a client sends)
        is counted as ``_unknown``, so clients cannot add series to /metrics without bound."""
        key = (req.model_id, req.version)
        return req.model_id if self.fleet.knows_model(*key) or key in self.config.aliases else "_unknown"

    async def _infer(
        self, req: InferRequest, headers: dict[str, str] | None, on_job: OnJob | None, t0: float
    ) -> InferReply:
        check_params(req.params, self.settings)
        asked, admitted = req, await self.admission.admit(req)
        req = admitted.request
        queued = False  # once the job may be in JOBS (or an earlier run answers), its tokens stay spent
        try:
            existing: ResultMessage | None = None
            if req.idempotency_key:
                job_id, existing = await idempotent_job(self.js, req.tenant_id, req.idempotency_key)  # type: ignore[arg-type]
                # the body as the client sent it: a degraded first try and a later one stay the same
                await self.admission.claim_key(idempotent_job_id(req.tenant_id, req.idempotency_key), asked)
                if existing is not None:
                    queued = True
                    if on_job is not None:  # a stream of a finished job: the stored result is all of it
                        await on_job(job_id)
                    return self._reply(existing, t0, admitted)
            else:
                job_id = new_job_id()
            if on_job is not None:
                await on_job(job_id)
            queued = True  # _run gives the tokens back if JetStream refuses the job; a lost ack keeps them
            try:
                reply = await self._run(req, job_id, headers, t0, admitted)
            except TetherError as exc:
                # A client's own short wait (or this gateway stopping) says nothing about the version.
                shortened = req.params is not None and (req.params.timeout_s or 1e18) < self.settings.request_timeout_s
                if not (isinstance(exc, WaitTimeout) and (shortened or self._closed)):
                    self._judge(admitted, exc.code)
                raise
            self._judge(admitted, None)
            return reply
        except BaseException:
            if not queued:
                with contextlib.suppress(Exception):
                    await self.admission.give_back(admitted)
            raise

    async def _run(
        self, req: InferRequest, job_id: str, headers: dict[str, str] | None, t0: float, admitted: Admitted
    ) -> InferReply:
        # A request without a correlation id is correlated by its job id, as a bare publish is: one
        # id to grep for, and time-ordered, so the store's indexes on it grow at their ends.
        cid = (headers or {}).get(telemetry.CORRELATION_ID) or job_id
        hop = telemetry.child_headers(headers, cid[: telemetry.MAX_CORRELATION_ID])
        fut: asyncio.Future[ResultMessage] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(job_id, []).append(fut)
        timeout = (
            req.params.timeout_s if req.params and req.params.timeout_s else self.settings.request_timeout_s
        )
        deadline = asyncio.get_running_loop().time() + timeout  # the publish and the wait share it
        try:
            try:
                ack = await publish_job(
                    self._publisher,  # type: ignore[arg-type]
                    subjects.job_subject(req.tenant_id, req.model_id, req.version),
                    codec.encode(JobSubmission.wire_of(req, job_id, time.time()), codec.MSGPACK),
                    {**hop, codec.CONTENT_TYPE: codec.MSGPACK, "Nats-Msg-Id": job_id},
                    job_id=job_id,
                    budget_s=timeout,
                )
            except (NoCapacity, StoreError):  # JetStream refused it: nothing was queued
                with contextlib.suppress(Exception):
                    await self.admission.give_back(admitted)
                raise
            if ack.duplicate and not fut.done():  # the job exists already; it may have finished
                existing = await fetch_final(self.js, job_id)  # type: ignore[arg-type]
                if existing is not None:
                    return self._reply(existing, t0, admitted)
            # one timer that fails the future, not asyncio.timeout_at's context (every request waits here)
            timer = asyncio.get_running_loop().call_at(deadline, _expire, fut)
            try:
                result = await fut
            except _Expired:
                raise WaitTimeout(
                    f"no result within {timeout:.0f}s; the job continues and its result will be on "
                    f"{subjects.result_subject(job_id)}",
                    job_id=job_id,
                ) from None
            except asyncio.CancelledError:
                if not self._closed:
                    raise
                # The gateway is stopping: answer now rather than leave the client waiting in silence.
                raise WaitTimeout(
                    f"the gateway stopped before the result arrived; the job continues and its result "
                    f"will be on {subjects.result_subject(job_id)}",
                    job_id=job_id,
                ) from None
            finally:
                timer.cancel()
            return self._reply(result, t0, admitted)
        finally:
            futs = self._pending.get(job_id)
            if futs is not None:
                with contextlib.suppress(ValueError):
                    futs.remove(fut)
                if not futs:
                    del self._pending[job_id]

    def _judge(self, admitted: Admitted, code: str | None) -> None:
        """Count an outcome against a canary rollout; a verdict is written off the reply's path."""
        served = admitted.request
        judged = self.admission.canaries.table.get(served.model_id)
        decided = self.admission.canaries.record(served.model_id, served.version, code)
        if decided is not None:
            self._background.spawn(self.admission.canaries.apply(decided, judged), name="canary-verdict")

    def waiting_on(self, job_id: str) -> int:
        """How many requests still wait for ``job_id``'s result here."""
        return len(self._pending.get(job_id, ()))

    def _reply(self, result: ResultMessage, t0: float, admitted: Admitted) -> InferReply:
        check_owner(result, admitted.request.tenant_id)
        if result.error is not None or result.status != "completed":
            info = (  # camelCase, as error_from_wire reads it (retryAfterS, jobId)
                result.error.model_dump(by_alias=True) if result.error else {"code": "internal", "message": "no result"}
            )
            raise error_from_wire({**info, "jobId": result.job_id})
        self.stats["completed"] += 1
        reply = InferReply(
            job_id=result.job_id,
            result=result.result,
            model_id=result.model_id,
            version=result.version,
            worker_id=result.worker_id or "",
            attempts=result.attempts,
            usage=result.usage,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
        )
        return admitted.annotate(reply)

    def _on_result(self, msg: Msg) -> None:
        try:
            job_id = subjects.job_id_from_result_subject(msg.subject)
        except TetherError:
            return
        futs = self._pending.get(job_id)
        if not futs:
            return
        try:
            result = ResultMessage.model_validate(codec.decode(msg.data, codec.content_type_of(msg.headers)))
        except Exception:
            return
        for f in futs:
            if not f.done():
                f.set_result(result)


class _Expired(Exception):
    """A request's wait for its result ran out (set on its future by its timer)."""


def _expire(fut: asyncio.Future[ResultMessage]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


def tenant_from_subject(subject: str, body: Any) -> Any:
    """On ``tether.infer.<tenant>`` the tenant is the subject's (NATS permissions decide who may publish
    there); a body naming another tenant is refused, a body naming none gets it filled in."""
    if subject == subjects.INFER or not isinstance(body, dict):
        return body
    tenant = subjects.tenant_from_infer_subject(subject)
    claimed = body.get("tenantId")
    if claimed is not None and claimed != tenant:
        raise Unauthorized(f"tenantId {claimed!r} does not match the subject's tenant", field="tenantId")
    return {**body, "tenantId": tenant}
