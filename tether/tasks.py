"""Supervised background tasks: none is fired and forgotten, every crash is logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class TaskGroup:
    """Keeps strong references to tasks, logs their crashes, cancels the rest on ``close()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "background task crashed",
                exc_info=(type(exc), exc, exc.__traceback__),
                extra={"group": self.name, "task": task.get_name()},
            )

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for running tasks; True when all finished within ``timeout``."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    async def close(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def wait_done(fut: asyncio.Future[Any], timeout: float) -> bool:
    """Wait until ``fut`` is done or ``timeout`` seconds pass, never cancelling ``fut``; True if done.

    What ``wait_for(shield(fut), timeout)`` does for a future that several waits share, with
    one timer and one waiter instead of a shield future, a waiter and a cancellation dance:
    the scheduler runs it several times per job.
    """
    if fut.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(timeout, wake)
    fut.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        fut.remove_done_callback(wake)
    return fut.done()


def run_main(main: Coroutine[Any, Any, _T]) -> _T:
    """Run a service's main coroutine on uvloop when it is installed (``TETHER_UVLOOP=0`` opts out).

    uvloop's C event loop and transports roughly halve the per-message CPU cost of
    nats-py on the hot path (see README, performance); asyncio's own loop is the fallback.
    """
    factory = None
    if os.environ.get("TETHER_UVLOOP", "1") != "0":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
