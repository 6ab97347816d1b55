"""Canary rollouts: a share of a model's traffic goes to a new version, gated by an error budget.

An operator starts one with ``tether canary start MODEL --stable 1 --canary 2 --weight 10``.
Every gateway then sends that percentage of the requests for ``MODEL:1`` to ``MODEL:2``
(the reply says so: ``requestedVersion`` is 1, ``version`` is 2, ``canary`` is true) and
counts the canary's outcomes. Once ``minRequests`` of them are in:

* an error rate above ``budget`` rolls the canary back (weight 0, state ``rolled_back``,
  the reason kept), so every request goes to the stable version again;
* else, with ``step`` > 0, the weight grows by ``step`` (up to 100: state ``promoted``,
  every request for the stable version goes to the canary) and the count starts over.

Errors that say something about the version count (``worker_failed``, ``timeout``,
``dead_lettered``, ``no_capacity``, ``internal``, ``store_unavailable``); a client's own
mistakes (``invalid_request``, ``quota_exceeded``, ``conflict``, ``cancelled``) do not.

The policies live in the KV bucket ``tether_canary`` under one key, ``canaries`` (a JSON
object by model id), written with compare-and-set so gateways that act at the same time
never undo each other. Gateways read it every ``REFRESH_S`` and at once when an operator
publishes on ``tether.control.canary.<model>`` (what ``tether canary`` does after a write).
Transitions are published on ``tether.events.canary.<state>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from streams.kv import CANARY_BUCKET
from tether import codec, subjects

log = logging.getLogger(__name__)

KEY = "canaries"
REFRESH_S = 1.0
#: Error codes that count against a canary's budget (about the version, not the client).
COUNTED = frozenset({"worker_failed", "timeout", "dead_lettered", "no_capacity", "internal", "store_unavailable"})
RUNNING, ROLLED_BACK, PROMOTED = "running", "rolled_back", "promoted"


@dataclass(frozen=True, slots=True)
class Canary:
    model_id: str
    stable: str
    canary: str
    weight: float  # percent of the stable version's requests sent to the canary
    budget: float = 0.05  # the canary's highest tolerated error rate
    min_requests: int = 20  # outcomes needed before the budget (or a step) is judged
    step: float = 0.0  # percent added after each judged window within budget (0: the operator steps)
    state: str = RUNNING
    reason: str = ""
    updated_at: float = 0.0

    def wire(self) -> dict[str, Any]:
        return {_camel(k): v for k, v in asdict(self).items()}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Canary:
        return cls(**{k: data[_camel(k)] for k in cls.__dataclass_fields__ if _camel(k) in data})

    def check(self) -> Canary:
        """This policy, or ValueError naming what is wrong with it."""
        if self.stable == self.canary:
            raise ValueError("the canary version must differ from the stable one")
        if not 0.0 <= self.weight <= 100.0:
            raise ValueError(f"weight must be a percentage from 0 to 100, not {self.weight}")
        if not 0.0 <= self.budget <= 1.0:
            raise ValueError(f"budget must be an error rate from 0 to 1, not {self.budget}")
        if self.min_requests < 1 or not 0.0 <= self.step <= 100.0:
            raise ValueError("min_requests must be at least 1 and step a percentage from 0 to 100")
        if self.state not in (RUNNING, ROLLED_BACK, PROMOTED):
            raise ValueError(f"unknown canary state {self.state!r}")
        return self


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def decode_table(raw: bytes | None) -> dict[str, Canary]:
    if not raw:
        return {}
    data = json.loads(raw)
    return {model: Canary.from_wire(c) for model, c in data.items()} if isinstance(data, dict) else {}


def encode_table(table: dict[str, Canary]) -> bytes:
    return codec.compact_json({m: c.wire() for m, c in sorted(table.items())}).encode()


async def edit(kv: KeyValue, change: Any, *, tries: int = 5) -> dict[str, Canary]:
    """Apply ``change(table) -> table`` with compare-and-set, retrying on a concurrent write."""
    for _ in range(tries):
        try:
            entry = await kv.get(KEY)
            table, revision = decode_table(entry.value), entry.revision
        except KeyNotFoundError:
            table, revision = {}, None
        new = change(dict(table))
        try:
            if revision is None:
                await kv.create(KEY, encode_table(new))
            else:
                await kv.update(KEY, encode_table(new), last=revision)
            return new
        except KeyWrongLastSequenceError:
            continue
    raise RuntimeError("the canary table kept changing under this write; try again")


@dataclass(slots=True)
class _Window:
    ok: int = 0
    errors: int = 0


class CanaryRouter:
    """A gateway's view of the canaries: where a request goes, and what its outcome does."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self.table: dict[str, Canary] = {}
        self._rng = rng or random.Random()
        self._windows: dict[str, _Window] = {}
        self._kv: KeyValue | None = None
        self._nc: Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Any = None
        self._wake = asyncio.Event()

    async def start(self, nc: Client, js: JetStreamContext) -> None:
        self._nc, self._kv = nc, await js.key_value(CANARY_BUCKET)
        await self.refresh()

        async def on_order(_msg: Any) -> None:
            self._wake.set()

        self._sub = await nc.subscribe(subjects.control_wildcard("canary"), cb=on_order)
        self._tasks.append(asyncio.get_running_loop().create_task(self._follow(), name="canaries"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # keep the last table; the next refresh may work
                log.warning("canary table refresh failed", extra={"error": repr(exc)})

    async def refresh(self) -> None:
        assert self._kv is not None
        try:
            table = decode_table((await self._kv.get(KEY)).value)
        except KeyNotFoundError:
            table = {}
        self.set_table(table)

    def set_table(self, table: dict[str, Canary]) -> None:
        for model, old in self.table.items():
            new = table.get(model)
            if new is None or (new.weight, new.state, new.canary) != (old.weight, old.state, old.canary):
                self._windows.pop(model, None)  # a new window for a new weight
        self.table = table

    # ---- the request path ---------------------------------------------------------------------

    def route(self, model_id: str, version: str) -> tuple[str, bool]:
        """The version to run a request for ``model_id:version`` on, and whether it is the canary."""
        c = self.table.get(model_id)
        if c is None or c.state == ROLLED_BACK or version != c.stable:
            return version, False
        if c.state == PROMOTED or self._rng.random() * 100.0 < c.weight:
            return c.canary, True
        return version, False

    def record(self, model_id: str, version: str, code: str | None) -> Canary | None:
        """Count one outcome (``code`` None: success); the policy to write when it changes it."""
        c = self.table.get(model_id)
        if c is None or c.state != RUNNING or version != c.canary:
            return None
        if code is not None and code not in COUNTED:
            return None
        w = self._windows.setdefault(model_id, _Window())
        if code is None:
            w.ok += 1
        else:
            w.errors += 1
        total = w.ok + w.errors
        if total < c.min_requests:
            return None
        rate = w.errors / total
        self._windows.pop(model_id, None)
        now = time.time()
        if rate > c.budget:
            reason = f"error rate {rate:.1%} over {total} requests exceeds the budget {c.budget:.1%}"
            return replace(c, weight=0.0, state=ROLLED_BACK, reason=reason, updated_at=now)
        if c.step <= 0:
            return None
        weight = min(100.0, c.weight + c.step)
        state = PROMOTED if weight >= 100.0 else RUNNING
        reason = f"error rate {rate:.1%} over {total} requests within the budget {c.budget:.1%}"
        return replace(c, weight=weight, state=state, reason=reason, updated_at=now)

    async def apply(self, decided: Canary, judged: Canary | None = None) -> None:
        """Write a decision of ``record`` (unless another gateway or an operator moved the canary since
        ``judged``, the policy the window was counted under) and announce it."""
        assert self._kv is not None

        def change(table: dict[str, Canary]) -> dict[str, Canary]:
            current = table.get(decided.model_id)
            if current is not None and current.state == RUNNING and current.canary == decided.canary:
                unchanged = judged is None or current == judged
                if decided.state == ROLLED_BACK or (unchanged and current.weight < decided.weight):
                    table[decided.model_id] = decided
            return table

        table = await edit(self._kv, change)
        self.set_table(table)
        if table.get(decided.model_id) == decided:
            log.warning("canary changed", extra={"canary": decided.wire()})
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.publish(
                        subjects.event_subject("canary", decided.state), codec.encode(decided.wire())
                    )
