"""Gateway policy read from ``TETHER_*`` variables: quotas, shedding, degrading, aliases, HTTP auth.

Spec strings (comma-separated items; a model is ``id`` or ``id:version``, version ``1`` when absent)::

    TETHER_QUOTAS="*=50/100,acme=5/10,acme:smollm2-135m-instruct=1/2"
        rate per second / burst, for every tenant (``*``), one tenant, or one tenant and model.
    TETHER_SHED_QUEUE_DEPTH="500,smollm2-135m-instruct=8"
        queued jobs past which a model sheds new requests (a bare number: every model; 0: never).
    TETHER_DEGRADE="smollm2-135m-instruct=echo"       deep-queue fallback, model -> cheaper model
    TETHER_DEGRADE_TENANTS="acme,demo"                tenants whose policy allows the fallback (``*``: all)
    TETHER_MODEL_ALIASES="phi-2:1.0=smollm2-135m-instruct"   a requested model served by another one
    TETHER_HTTP_AUTH=optional|required                API keys optional (tenant from the body) or required
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from tether.errors import InvalidRequest

ModelKey = tuple[str, str]
ANY_TENANT = "*"


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's refill rate (tokens per second) and capacity."""

    per_s: float
    burst: float

    def __post_init__(self) -> None:
        # NaN fails every comparison; inf or a rate whose 1/rate overflows makes Retry-After nan/inf
        if not (0 < self.per_s < math.inf and 1 <= self.burst < math.inf) or math.isinf(1 / self.per_s):
            raise InvalidRequest(f"quota needs a finite rate > 0 and a finite burst >= 1, got {self.per_s}/{self.burst}")


@dataclass(frozen=True, slots=True)
class QuotaRule:
    tenant: str  # a tenant id or ANY_TENANT
    model: str | None  # None: every model of the tenant together
    rate: Rate


def parse_model(text: str) -> ModelKey:
    model, _, version = text.strip().partition(":")
    model, version = model.strip(), version.strip() or "1"
    if not model:
        raise InvalidRequest(f"empty model in {text!r}")
    return model, version


def _items(spec: str) -> list[str]:
    return [item.strip() for item in spec.split(",") if item.strip()]


def _pair(item: str, what: str) -> tuple[str, str]:
    left, sep, right = item.partition("=")
    if not sep or not left.strip() or not right.strip():
        raise InvalidRequest(f"bad {what} item {item!r}: expected LEFT=RIGHT")
    return left.strip(), right.strip()


def parse_quotas(spec: str) -> tuple[QuotaRule, ...]:
    rules = []
    for item in _items(spec):
        who, rate = _pair(item, "quota")
        per_s, _, burst = rate.partition("/")
        try:
            parsed = Rate(float(per_s), float(burst or per_s))
        except ValueError:
            raise InvalidRequest(f"bad quota rate {rate!r} in {item!r}: expected RATE/BURST") from None
        tenant, _, model = who.partition(":")
        rules.append(QuotaRule(tenant=tenant.strip(), model=model.strip() or None, rate=parsed))
    return tuple(rules)


def parse_model_map(spec: str, what: str) -> dict[ModelKey, ModelKey]:
    return {parse_model(a): parse_model(b) for a, b in (_pair(item, what) for item in _items(spec))}


def parse_shed(spec: str) -> tuple[int, dict[ModelKey, int]]:
    default, per_model = 0, {}
    for item in _items(spec):
        try:
            if "=" in item:
                model, depth = _pair(item, "shed")
                per_model[parse_model(model)] = _depth(depth, item)
            else:
                default = _depth(item, item)
        except ValueError:
            raise InvalidRequest(f"bad queue depth in {item!r}") from None
    return default, per_model


def _depth(text: str, item: str) -> int:
    depth = int(text)
    if depth < 0:
        raise InvalidRequest(f"TETHER_SHED_QUEUE_DEPTH: queue depth must be >= 0 (0: never shed), got {item!r}")
    return depth


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    quotas: tuple[QuotaRule, ...] = ()
    shed_default: int = 0  # 0: never shed
    shed_per_model: dict[ModelKey, int] = field(default_factory=dict)
    degrade: dict[ModelKey, ModelKey] = field(default_factory=dict)
    degrade_tenants: frozenset[str] = frozenset()
    aliases: dict[ModelKey, ModelKey] = field(default_factory=dict)
    auth_required: bool = False
    http_host: str = "127.0.0.1"
    http_max_connections: int = 1000  # beyond this, new HTTP connections get 503 at once
    backlog_ttl_s: float = 0.25  # how long a model's measured queue depth is reused

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> GatewayConfig:
        e = os.environ if env is None else env
        shed_default, shed_per_model = parse_shed(e.get("TETHER_SHED_QUEUE_DEPTH", ""))
        auth = e.get("TETHER_HTTP_AUTH", "optional").strip().lower()
        if auth not in ("optional", "required"):
            raise InvalidRequest(f"TETHER_HTTP_AUTH must be optional or required, got {auth!r}")
        return cls(
            quotas=parse_quotas(e.get("TETHER_QUOTAS", "")),
            shed_default=shed_default,
            shed_per_model=shed_per_model,
            degrade=parse_model_map(e.get("TETHER_DEGRADE", ""), "degrade"),
            degrade_tenants=frozenset(_items(e.get("TETHER_DEGRADE_TENANTS", ""))),
            aliases=parse_model_map(e.get("TETHER_MODEL_ALIASES", ""), "alias"),
            auth_required=auth == "required",
            http_host=e.get("TETHER_HTTP_HOST", "127.0.0.1"),
            http_max_connections=_positive_int(e.get("TETHER_HTTP_MAX_CONNECTIONS", "1000"), "TETHER_HTTP_MAX_CONNECTIONS"),
        )

    def shed_depth(self, model: ModelKey) -> int:
        return self.shed_per_model.get(model, self.shed_default)

    def may_degrade(self, tenant: str) -> bool:
        return ANY_TENANT in self.degrade_tenants or tenant in self.degrade_tenants

    def rules_for(self, tenant: str, model: ModelKey, requested: str | None = None) -> list[QuotaRule]:
        """The most specific tenant-wide rule and the most specific rule for the served model; when the
        request named another model (an alias such as ``phi-2`` served by SmolLM2), also the most
        specific rule for the name it asked for: a rule written for either holds."""
        names = [None, model[0], *([requested] if requested and requested != model[0] else [])]
        out: list[QuotaRule] = []
        for want_model in names:
            exact = [r for r in self.quotas if r.tenant == tenant and r.model == want_model]
            anyone = [r for r in self.quotas if r.tenant == ANY_TENANT and r.model == want_model]
            chosen = exact or anyone
            if chosen:
                out.append(chosen[-1])
        return out


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidRequest(f"{name} must be a positive integer, got {text!r}")
    return value
