"""Supervised background tasks: none is fired and forgotten, every crash is logged."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")


#: How long a cancelled task may take to end (its clean-up) before it is cancelled again.
RECANCEL_S = 5.0


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
        """Cancel every task and wait for them to end.

        A task still running ``RECANCEL_S`` after its cancel lost it (a library's ``wait_for``
        on Python 3.11 can swallow one) and is cancelled again, and again, until it ends: a
        close never waits forever on a loop that missed its cancel.
        """
        pending = set(self._tasks)
        for t in pending:
            t.cancel()
        while pending:
            _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
            for t in pending:
                log.warning("task still running after its cancel; cancelled again",
                            extra={"group": self.name, "task": t.get_name()})
                t.cancel()


async def closing_on_failure(start: Awaitable[None], close: Callable[[], Awaitable[None]]) -> None:
    """Await a role's ``start``; if it fails or is cancelled half-way, ``close`` what it had opened
    (connection, store, threads) before the error propagates, so nothing is left running."""
    try:
        await start
    except BaseException:
        with contextlib.suppress(Exception):
            await close()
        raise


async def in_daemon_thread(
    fn: Callable[[], _T], *, name: str, abandoned: Callable[[], object] | None = None
) -> _T:
    """Run ``fn`` on a daemon thread of its own and await its result.

    Unlike ``asyncio.to_thread`` (the default executor, joined at exit), a process that stops
    while ``fn`` runs (a SIGTERM during a model's download or load) exits without waiting for it.
    If the wait is cancelled, ``abandoned`` runs once ``fn`` has returned or raised (on that thread,
    or here when the outcome was already on its way), to free what ``fn`` built, even half-way.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[_T] = loop.create_future()
    lock, state = threading.Lock(), {"gave_up": False, "delivered": False}

    def deliver(result: _T | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def body() -> None:
        result: _T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task, as to_thread does
            error = exc
        with lock:
            gave_up = state["gave_up"]
            state["delivered"] = not gave_up
        if gave_up:
            if abandoned is not None:
                _quietly(abandoned)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=body, name=name, daemon=True).start()
    try:
        return await fut
    except asyncio.CancelledError:
        with lock:
            state["gave_up"] = True
            on_its_way = state["delivered"]
        if on_its_way and abandoned is not None:  # fn returned just before the cancel
            _quietly(abandoned)
        raise


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        log.exception("cleanup after an abandoned thread failed")


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


#: Allocations between young-generation collections in a running service (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000
_service_process = False


def settle_heap() -> None:
    """Keep what start-up built out of the cyclic collector's work, and collect the young less often.

    Called once a service has started: its modules, schemas, models and connections are
    long-lived, so they are moved to the permanent generation (``gc.freeze``) and no full
    collection rescans them. A job's short-lived objects mostly die by reference count; a
    larger young threshold lets them die before a collection promotes them. Together this
    took the collector from about 5% of a hot-path service's CPU to under 1% (README,
    performance). Only in a process that ``run_main`` runs: a test process that starts and
    stops many services keeps CPython's defaults.
    """
    if not _service_process:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_main(main: Coroutine[Any, Any, _T]) -> _T:
    """Run a service's main coroutine on uvloop when it is installed (``TETHER_UVLOOP=0`` opts out).

    uvloop's C event loop and transports roughly halve the per-message CPU cost of
    nats-py on the hot path (see README, performance); asyncio's own loop is the fallback.
    """
    global _service_process
    _service_process = True
    factory = None
    if os.environ.get("TETHER_UVLOOP", "1") != "0":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner, _profiled():
        return runner.run(main)


@contextlib.contextmanager
def _profiled() -> Iterator[None]:
    """With ``TETHER_CPROFILE_DIR`` set, write this process's cProfile there when it exits.

    A developer's tool (``python -m pstats DIR/<role>-<pid>.prof``): call counts are exact,
    times are inflated by the profiler; ``bench/pipeline.py`` reports the real CPU per job.
    """
    out_dir = os.environ.get("TETHER_CPROFILE_DIR")
    if not out_dir:
        yield
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        role = sys.argv[1] if len(sys.argv) > 1 else "main"
        prof.dump_stats(os.path.join(out_dir, f"{role}-{os.getpid()}.prof"))
