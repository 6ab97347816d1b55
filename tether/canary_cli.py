"""``tether canary``: start, step, promote, abort and list canary rollouts (``services/gateway/canary.py``).

Each command edits the ``tether_canary`` KV bucket with compare-and-set, then publishes on
``tether.control.canary.<model>`` so every gateway applies the change at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nats.js.errors import KeyNotFoundError

from services.gateway.canary import KEY, PROMOTED, ROLLED_BACK, RUNNING, Canary, decode_table, edit
from streams.kv import CANARY_BUCKET, apply_kv, kv_buckets
from tether import codec, subjects
from tether.errors import InvalidRequest

Change = Callable[[dict[str, Canary]], dict[str, Canary]]


def _change(args: argparse.Namespace) -> Change:
    now = time.time()

    def existing(table: dict[str, Canary]) -> Canary:
        c = table.get(args.model)
        if c is None:
            raise InvalidRequest(f"no canary for model {args.model!r}", field="model")
        return c

    def start(table: dict[str, Canary]) -> dict[str, Canary]:
        c = Canary(
            model_id=args.model, stable=args.stable, canary=args.canary, weight=args.weight, budget=args.budget,
            min_requests=args.min_requests, step=args.step, reason="started by an operator", updated_at=now,
        )
        table[args.model] = _checked(c)
        return table

    def set_weight(table: dict[str, Canary]) -> dict[str, Canary]:
        c = existing(table)
        state = PROMOTED if args.weight >= 100 else RUNNING
        table[args.model] = _checked(replace(c, weight=args.weight, state=state, reason="set by an operator",
                                             updated_at=now))
        return table

    def promote(table: dict[str, Canary]) -> dict[str, Canary]:
        table[args.model] = replace(existing(table), weight=100.0, state=PROMOTED, reason="promoted by an operator",
                                    updated_at=now)
        return table

    def abort(table: dict[str, Canary]) -> dict[str, Canary]:
        table[args.model] = replace(existing(table), weight=0.0, state=ROLLED_BACK, reason=args.reason,
                                    updated_at=now)
        return table

    def remove(table: dict[str, Canary]) -> dict[str, Canary]:
        existing(table)
        del table[args.model]
        return table

    changes: dict[str, Change] = {"start": start, "set": set_weight, "promote": promote, "abort": abort, "end": remove}
    return changes[args.canary_cmd]


def _checked(c: Canary) -> Canary:
    try:
        return c.check()
    except ValueError as exc:
        raise InvalidRequest(str(exc), field="canary") from None


def cmd_canary(args: argparse.Namespace) -> int:
    from tether.cli import _connected, _settings

    settings = _settings(args)

    async def go(nc: Any, js: Any) -> int:
        await apply_kv(js, kv_buckets(settings, nc._server_info))
        kv = await js.key_value(CANARY_BUCKET)
        if args.canary_cmd == "list":
            try:
                table = decode_table((await kv.get(KEY)).value)
            except KeyNotFoundError:
                table = {}
        else:
            table = await edit(kv, _change(args))
            await nc.publish(subjects.control_subject("canary", args.model), codec.encode({"modelId": args.model}))
            await nc.flush()
        rows = [c.wire() for c in table.values()] if args.canary_cmd == "list" else (
            [table[args.model].wire()] if args.model in table else [{"modelId": args.model, "ended": True}]
        )
        for row in rows:
            print(json.dumps(row))
        if not rows:
            print("no canaries", file=sys.stderr)
        return 0

    return asyncio.run(_connected(settings, go))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("canary", help="canary rollouts: a share of a model's traffic on a new version")
    csub = c.add_subparsers(dest="canary_cmd", required=True, metavar="SUBCOMMAND")
    s = csub.add_parser("start", help="send --weight %% of MODEL:STABLE's requests to MODEL:CANARY")
    s.add_argument("model", help="model id")
    s.add_argument("--stable", required=True, help="the version serving now")
    s.add_argument("--canary", required=True, help="the new version")
    s.add_argument("--weight", type=float, default=10.0, help="percent of requests to the canary (default 10)")
    s.add_argument("--budget", type=float, default=0.05, help="highest tolerated error rate (default 0.05)")
    s.add_argument("--min-requests", type=int, default=20, help="outcomes judged at a time (default 20)")
    s.add_argument("--step", type=float, default=0.0, help="percent added per window within budget (0: manual)")
    w = csub.add_parser("set", help="set the canary's share of requests")
    w.add_argument("model", help="model id")
    w.add_argument("--weight", type=float, required=True, help="percent of requests to the canary")
    p = csub.add_parser("promote", help="send every request for the stable version to the canary")
    p.add_argument("model", help="model id")
    a = csub.add_parser("abort", help="roll back: every request to the stable version")
    a.add_argument("model", help="model id")
    a.add_argument("--reason", default="aborted by an operator", help="kept with the canary")
    e = csub.add_parser("end", help="forget the canary (after a promotion, point clients or aliases at the new version)")
    e.add_argument("model", help="model id")
    csub.add_parser("list", help="every canary, one JSON line each")
    c.set_defaults(fn=cmd_canary)
