"""Admission: what every entrypoint (NATS ``tether.infer``, HTTP) decides before a job is queued.

In order: resolve an alias (``phi-2:1.0`` served by ``smollm2-135m-instruct``), reject an
unknown model, take a token from the tenant's shared buckets (``quota_exceeded``), and,
when the model's queue is deeper than its threshold, degrade to the configured cheaper
model if the tenant's policy allows it or shed the request (``no_capacity``, retryable).
An idempotency key's first request body is remembered, so the same key with a different
body is a ``conflict`` instead of silently returning another request's result.

With no quotas, thresholds, aliases or key configured, admission is a few dict lookups.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, replace

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from schemas import InferReply, InferRequest
from services.gateway.backlog import Backlog
from services.gateway.canary import CanaryRouter
from services.gateway.config import GatewayConfig, ModelKey, QuotaRule
from services.gateway.quota import SharedBuckets
from streams.kv import IDEMPOTENCY_BUCKET
from tether.errors import Conflict, ModelUnknown, NoCapacity
from tether.fleet import FleetView

SHED_RETRY_AFTER_S = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admitted:
    request: InferRequest  # the request as it will be queued (model possibly rewritten)
    requested: ModelKey  # what the client asked for
    degraded: bool = False
    quota: tuple[QuotaRule, ...] = ()  # the buckets it took a token from (given back if refused later)
    canary: bool = False  # sent to a canary version by a rollout (``canary.py``)

    def annotate(self, reply: InferReply) -> InferReply:
        """Say in the reply which model served when it is not the one requested."""
        if (reply.model_id, reply.version) == self.requested and not self.degraded:
            return reply
        return reply.model_copy(
            update={
                "requested_model_id": self.requested[0],
                "requested_version": self.requested[1],
                "degraded": self.degraded or None,
                "canary": self.canary or None,
            }
        )


def fingerprint(req: InferRequest) -> str:
    """SHA-256 of what makes two requests the same job: model, version, input and params."""
    body = req.wire()
    body.pop("idempotencyKey", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Admission:
    def __init__(self, config: GatewayConfig, fleet: FleetView) -> None:
        self.config = config
        self.fleet = fleet
        self.quotas = SharedBuckets(config)
        self.canaries = CanaryRouter()
        self._backlog: Backlog | None = None
        self._keys: KeyValue | None = None

    async def start(self, js: JetStreamContext, nc: Client | None = None) -> None:
        await self.quotas.start(js)
        if nc is not None:
            await self.canaries.start(nc, js)
        self._backlog = Backlog(js, ttl_s=self.config.backlog_ttl_s)
        self._keys = await js.key_value(IDEMPOTENCY_BUCKET)

    async def admit(self, req: InferRequest) -> Admitted:
        requested = (req.model_id, req.version)
        target = self.config.aliases.get(requested, requested)
        version, canary = self.canaries.route(*target)
        if canary and self.fleet.knows_model(target[0], version):  # a canary nobody serves is not tried
            target = (target[0], version)
        else:
            canary = False
        if not self.fleet.knows_model(*target):
            raise ModelUnknown(
                f"modelId {req.model_id!r} version {req.version!r} is not served by any worker",
                field="modelId",
            )
        taken = await self.quotas.admit(req.tenant_id, target, req.model_id)
        try:
            admitted = await self._shed_or_degrade(req, requested, target, taken)
            return replace(admitted, canary=True) if canary and not admitted.degraded else admitted
        except BaseException:  # shed, or the backlog could not be read: the request was not queued
            with contextlib.suppress(Exception):
                await self.quotas.refund(taken, req.tenant_id)
            raise

    async def give_back(self, admitted: Admitted) -> None:
        """Return the quota tokens of an admitted request that was never queued (a conflict, a full queue)."""
        await self.quotas.refund(admitted.quota, admitted.request.tenant_id)

    async def _shed_or_degrade(
        self, req: InferRequest, requested: ModelKey, target: ModelKey, taken: tuple[QuotaRule, ...]
    ) -> Admitted:
        degraded = False
        if await self._over_threshold(target):
            fallback = self.config.degrade.get(target)
            usable = (
                fallback is not None
                and self.config.may_degrade(req.tenant_id)
                and self.fleet.knows_model(*fallback)
                and not await self._over_threshold(fallback)
            )
            if not usable or fallback is None:
                raise NoCapacity(
                    f"model {target[0]}:{target[1]} has more queued jobs than its threshold "
                    f"({self.config.shed_depth(target)}); retry later",
                    field="modelId",
                    retry_after_s=SHED_RETRY_AFTER_S,
                )
            target, degraded = fallback, True
        if target != requested:
            req = req.model_copy(update={"model_id": target[0], "version": target[1]})
        return Admitted(request=req, requested=requested, degraded=degraded, quota=taken)

    async def depths(self) -> dict[ModelKey, int]:
        """Queued-or-running jobs per model, for the views; empty before ``start`` or while JetStream does
        not answer (the views still render; shedding reads the backlog itself and fails on its own)."""
        if self._backlog is None:
            return {}
        try:
            return await self._backlog.depths()
        except Exception as exc:
            log.warning("queue depths unavailable", extra={"error": repr(exc)})
            return {}

    async def _over_threshold(self, model: ModelKey) -> bool:
        limit = self.config.shed_depth(model)
        if limit <= 0 or self._backlog is None:
            return False
        return await self._backlog.depth(model) >= limit

    async def claim_key(self, job_id: str, req: InferRequest) -> None:
        """Remember the first body sent with this idempotency key; a different body is a ``conflict``."""
        if self._keys is None:
            return
        fp = fingerprint(req).encode()
        key = "i." + job_id
        try:
            await self._keys.create(key, fp)
        except KeyWrongLastSequenceError:
            first = await self._keys.get(key)
            if first.value != fp:
                raise Conflict(
                    "idempotencyKey was used before with a different request body",
                    field="idempotencyKey",
                    job_id=job_id,
                ) from None
