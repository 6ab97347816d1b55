"""Per-tenant token buckets whose state lives in NATS, so every gateway draws from the same bucket.

The arithmetic (``take``) is pure. ``SharedBuckets`` keeps one bucket per rule and
tenant in the KV bucket ``tether_quota`` and changes it only by compare-and-set on the
entry's revision: two gateways racing for the last token cannot both win, the loser
re-reads and decides again. Time is the wall clock of the gateway that takes the token;
gateways on different machines need reasonably synchronised clocks (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.gateway.config import GatewayConfig, ModelKey, QuotaRule, Rate
from streams.kv import QUOTA_BUCKET
from tether.errors import QuotaExceeded

MAX_CAS_TRIES = 32
#: A bucket time this little ahead of the local clock is another gateway's clock, not a step of ours:
#: it is kept, so the gateway ahead is not given the difference again as refill on its next take.
MAX_SKEW_S = 30.0


@dataclass(frozen=True, slots=True)
class BucketState:
    tokens: float
    ts: float


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    state: BucketState  # the state to store when allowed
    retry_after_s: float  # 0 when allowed


def take(state: BucketState | None, rate: Rate, now: float, cost: float = 1.0) -> Decision:
    """Refill ``state`` up to ``now`` and try to take ``cost`` tokens. A missing state is a full bucket."""
    if state is None:
        tokens = rate.burst
    else:
        elapsed = max(0.0, now - state.ts)  # a clock that stepped back refills nothing
        tokens = min(rate.burst, state.tokens + elapsed * rate.per_s)
    ts = state.ts if state is not None and 0.0 < state.ts - now <= MAX_SKEW_S else now
    if tokens >= cost:  # a negative cost (a refund) is always allowed, up to the burst
        return Decision(True, BucketState(min(rate.burst, tokens - cost), ts), 0.0)
    return Decision(False, BucketState(tokens, now), (cost - tokens) / rate.per_s)


def bucket_key(rule: QuotaRule, tenant: str) -> str:
    """One KV key per (rule scope, tenant): ``q.<sha256 prefix>`` (KV keys allow few characters)."""
    scope = f"{tenant}\x00{rule.model or '*'}"
    return "q." + hashlib.sha256(scope.encode()).hexdigest()[:40]


def _encode(state: BucketState) -> bytes:
    return json.dumps({"tokens": state.tokens, "ts": state.ts}).encode()


def _decode(raw: bytes | None) -> BucketState | None:
    if not raw:
        return None
    data = json.loads(raw)
    return BucketState(float(data["tokens"]), float(data["ts"]))


class SharedBuckets:
    """Token buckets in the ``tether_quota`` KV bucket, updated by compare-and-set."""

    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._kv: KeyValue | None = None

    async def start(self, js: JetStreamContext) -> None:
        if self.config.quotas:
            self._kv = await js.key_value(QUOTA_BUCKET)

    async def admit(self, tenant: str, model: ModelKey, requested: str | None = None) -> tuple[QuotaRule, ...]:
        """Take one token from every bucket that applies (``requested``: the model name asked for, when an
        alias); the rules taken from, to ``refund`` if the request is refused later. ``QuotaExceeded``
        (with a retry time) gives back what it took first."""
        rules = self.config.rules_for(tenant, model, requested)
        if not rules or self._kv is None:
            return ()
        taken: list[QuotaRule] = []
        try:
            for rule in rules:
                await self._take(rule, tenant)
                taken.append(rule)
        except BaseException:  # over a quota, a NATS error, or the request cancelled half-way
            await self.refund(tuple(taken), tenant)
            raise
        return tuple(taken)

    async def refund(self, rules: tuple[QuotaRule, ...], tenant: str) -> None:
        """Give back the tokens a request took before it was refused (best effort)."""
        for rule in rules:
            with contextlib.suppress(Exception):
                await self._take(rule, tenant, cost=-1.0)

    async def _take(self, rule: QuotaRule, tenant: str, cost: float = 1.0) -> None:
        assert self._kv is not None
        key = bucket_key(rule, tenant)
        for _ in range(MAX_CAS_TRIES):
            try:
                entry = await self._kv.get(key)
                revision, state = entry.revision, _decode(entry.value)
            except KeyNotFoundError:
                revision, state = None, None
            decision = take(state, rule.rate, self._clock(), cost)
            if not decision.allowed:
                scope = f"model {rule.model}" if rule.model else "all models"
                raise QuotaExceeded(
                    f"tenant {tenant!r} is over its rate of {rule.rate.per_s:g}/s (burst "
                    f"{rule.rate.burst:g}) for {scope}",
                    field="tenantId",
                    retry_after_s=decision.retry_after_s,
                )
            try:
                if revision is None:
                    await self._kv.create(key, _encode(decision.state))
                else:
                    await self._kv.update(key, _encode(decision.state), last=revision)
                return
            except KeyWrongLastSequenceError:
                await asyncio.sleep(random.uniform(0, 0.002))  # another gateway won; re-read and decide again
        raise QuotaExceeded(
            f"tenant {tenant!r}: quota state too contended, retry shortly", field="tenantId", retry_after_s=0.05
        )
