"""Headless Debian Chromium driven over the DevTools protocol (a websocket), for end-to-end page tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import websockets

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab: navigate, evaluate JavaScript, take a screenshot."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self._ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def eval(self, expression: str) -> Any:
        out = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return out.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, timeout: float = 20.0, what: str = "") -> Any:
        """Evaluate until the value is truthy (the page updates itself: no reload here)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.eval(expression)
            if last:
                return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"{what or expression} not true after {timeout:.0f}s (last: {last!r})")

    async def screenshot(self) -> bytes:
        data = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(data["data"])


@asynccontextmanager
async def chromium(profile: Path, *, size: str = "1400,1000") -> AsyncIterator[Page]:
    exe = chromium_path()
    assert exe is not None
    proc = await asyncio.create_subprocess_exec(
        exe, *FLAGS, f"--window-size={size}", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(lambda: port_file.exists() and bool(port_file.read_text().strip())):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {proc.returncode})")
            await asyncio.sleep(0.1)
        port = int((await asyncio.to_thread(port_file.read_text)).split()[0])
        async with httpx.AsyncClient() as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with websockets.connect(page_ws, max_size=None) as ws:
            yield Page(ws)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
