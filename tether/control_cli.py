"""``tether drain`` and ``tether evict``: operator orders to workers on ``tether.control.>``."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any

from tether import codec, subjects

#: How long an order to ``all`` workers collects their answers.
ANSWERS_WAIT_S = 1.0


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, at least 0."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (finite, at least 0)")
    return value


async def order(nc: Any, action: str, target: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one order; the answers of the workers it reached (one for a worker id, any for ``all``)."""
    subject = subjects.control_subject(action, target)
    data = codec.encode(body)
    if target != "all":
        reply = await nc.request(subject, data, timeout=5.0)
        return [codec.decode(reply.data, codec.content_type_of(reply.headers))]
    inbox = nc.new_inbox()
    answers: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        with_answer = codec.decode(msg.data, codec.content_type_of(msg.headers))
        if isinstance(with_answer, dict):
            answers.append(with_answer)

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, data, reply=inbox)
        await nc.flush()
        await asyncio.sleep(ANSWERS_WAIT_S)
    finally:
        await sub.unsubscribe()
    return answers


def _run(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    from tether.cli import _connected, _settings

    async def go(nc: Any, js: Any) -> int:
        try:
            answers = await order(nc, action, args.worker_id, body)
        except Exception as exc:
            print(f"error [unavailable]: worker {args.worker_id} did not answer: {exc}", file=sys.stderr)
            return 1
        for answer in answers:
            print(json.dumps(answer))
        if args.worker_id == "all":
            print(f"{action} ordered for every worker; {len(answers)} answered", file=sys.stderr)
        refused = [a for a in answers if action == "evict" and not a.get("evicted")]
        return 1 if refused and len(refused) == len(answers) else 0

    return asyncio.run(_connected(_settings(args), go))


def cmd_drain(args: argparse.Namespace) -> int:
    return _run(args, "drain", {"graceS": args.grace})


def cmd_evict(args: argparse.Namespace) -> int:
    return _run(args, "evict", {"modelId": args.model, "version": args.version})


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dn = sub.add_parser("drain", help="tell a worker (or 'all') to finish its jobs and stop")
    dn.add_argument("worker_id", help="worker id as shown by `tether status`, or all")
    dn.add_argument("--grace", type=seconds, default=30.0, help="seconds to finish in-flight jobs (default 30)")
    dn.set_defaults(fn=cmd_drain)

    ev = sub.add_parser("evict", help="unload a warm model from a worker (or 'all') now; it loads again on demand")
    ev.add_argument("worker_id", help="worker id as shown by `tether status`, or all")
    ev.add_argument("--model", required=True, help="model id")
    ev.add_argument("--version", default="1", help="model version (default 1)")
    ev.set_defaults(fn=cmd_evict)
