"""``tether infer``: one request through ``tether.infer`` from the command line (see tether/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from tether import client, codec, subjects
from tether.connection import connect
from tether.errors import TetherError
from tether.settings import Settings


def stream_ending(streamed: str, result: Any) -> str:
    """What ``--stream`` prints after the chunks it printed (``streamed``), once the final ``result`` is in.

    Text that continued the stream: nothing more (a newline). A result that is not text (embeddings
    stream no chunks): the result itself. Text that does not begin with what was streamed (a retried
    attempt that sampled differently): the whole result, said to replace what was shown.
    """
    if not isinstance(result, str):
        return json.dumps(result)
    if not result.startswith(streamed):
        return f"\n[the streamed text was superseded by a retry; the result is:]\n{result}"
    return ""


def run_infer(s: Settings, args: argparse.Namespace) -> int:
    """One request through ``tether.infer``; the reply (or ``--stream``ed tokens) on stdout. Exit 0 or 1."""
    params: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        params["maxNewTokens"] = args.max_new_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature

    def fail(code: str, message: str) -> int:
        error = {"code": code, "message": message, "retryable": True}
        print(json.dumps({"error": error}) if args.json else f"error [{code}]: {message}", file=sys.stderr)
        return 1

    async def stream(nc: Any) -> int:
        reply: dict[str, Any] = {}
        streamed: list[str] = []
        async for part in client.infer_stream(
            nc, model=args.model, version=args.version, tenant=args.tenant, input=args.text, params=params,
            idempotency_key=args.idempotency_key, timeout=args.timeout,
            encoding=codec.MSGPACK if args.msgpack else codec.JSON,
        ):
            if isinstance(part, dict):
                reply = part
            elif not args.json:
                streamed.append(part)
                print(part, end="", flush=True)
        print(json.dumps(reply) if args.json else stream_ending("".join(streamed), reply.get("result")))
        return 0

    async def go() -> int:
        try:  # a one-shot command fails fast (nats-py: 0 would mean forever)
            nc = await connect(s.url, name="tether-cli", max_reconnect_attempts=1)
        except (OSError, NatsError) as exc:
            return fail("unavailable", f"cannot reach NATS at {s.url}: {exc}")
        try:
            if args.stream:
                return await stream(nc)
            reply = await client.infer(
                nc,
                model=args.model,
                version=args.version,
                tenant=args.tenant,
                input=args.text,
                params=params,
                idempotency_key=args.idempotency_key,
                timeout=args.timeout,
                encoding=codec.MSGPACK if args.msgpack else codec.JSON,
            )
        except TetherError as exc:
            print(
                json.dumps({"error": exc.to_wire()}) if args.json else f"error [{exc.code}]: {exc.message}",
                file=sys.stderr,
            )
            return 1
        except NoRespondersError:
            return fail("unavailable", f"no gateway answers {subjects.INFER} on {s.url}")
        except TimeoutError:
            return fail("timeout", f"no reply within {args.timeout}s")
        finally:
            await nc.close()
        if args.json:
            print(json.dumps(reply))
        else:
            result = reply["result"]
            print(result if isinstance(result, str) else json.dumps(result))
        return 0

    return asyncio.run(go())
