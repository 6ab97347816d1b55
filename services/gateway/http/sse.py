"""Server-Sent Events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"  # OpenAI's end-of-stream marker


def event(data: Any, *, name: str | None = None, event_id: str | int | None = None) -> bytes:
    """One event: optional ``event:`` and ``id:`` lines, the JSON data (one ``data:`` line per line)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    lines = []
    if name is not None:
        lines.append(f"event: {name}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str = "") -> bytes:
    """A comment line, ignored by clients: keeps idle connections open through proxies."""
    return f": {text}\n\n".encode()


#: How long a stream may stay silent before a comment goes out (proxies often cut idle connections
#: after 60 s; a job waiting in the queue for a worker sends nothing for as long as it waits).
KEEPALIVE_S = 15.0


async def with_keepalive(source: AsyncIterator[bytes], every_s: float | None = None) -> AsyncIterator[bytes]:
    """``source``'s events, with a ``: keep-alive`` comment after every ``every_s`` seconds of silence."""
    every = KEEPALIVE_S if every_s is None else every_s
    it = source.__aiter__()
    nxt: asyncio.Future[bytes] = asyncio.ensure_future(it.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({nxt}, timeout=every)
            if not done:
                yield comment("keep-alive")
                continue
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            yield item
            nxt = asyncio.ensure_future(it.__anext__())
    finally:  # the client went away (or the stream ended): the source's own cleanup runs
        if not nxt.done():
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def parse(stream: str) -> list[dict[str, str]]:
    """Split an event stream into events (``{"event"?, "id"?, "data"}``); comments are dropped."""
    out = []
    for block in stream.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                data.append(value)
            elif key in ("event", "id"):
                fields[key] = value
        if data:
            fields["data"] = "\n".join(data)
            out.append(fields)
    return out
