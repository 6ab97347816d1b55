"""``tether.tasks.in_daemon_thread``: a result or an error comes back as from ``asyncio.to_thread``; the
thread is a daemon (a process stopping mid-load does not wait for it); a cancelled wait frees what
the function built once it returns or fails."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tether.tasks import in_daemon_thread


async def test_the_result_and_the_error_come_back() -> None:
    assert await in_daemon_thread(lambda: 6 * 7, name="answer") == 42

    def broken() -> None:
        raise ValueError("no such weights")

    with pytest.raises(ValueError, match="no such weights"):
        await in_daemon_thread(broken, name="broken")


async def test_it_runs_on_a_daemon_thread_of_its_own() -> None:
    seen: list[threading.Thread] = []
    await in_daemon_thread(lambda: seen.append(threading.current_thread()), name="load:probe")
    assert seen[0].daemon and seen[0].name == "load:probe" and seen[0] is not threading.main_thread()


async def test_a_cancelled_wait_frees_what_the_function_built_once_it_returns() -> None:
    release, freed = threading.Event(), threading.Event()
    built: list[str] = []

    def slow_load() -> str:
        release.wait(10)
        built.append("weights")
        return "weights"

    waiting = asyncio.ensure_future(in_daemon_thread(slow_load, name="slow", abandoned=freed.set))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not freed.is_set()  # the load is still running: nothing to free yet
    release.set()
    assert await asyncio.to_thread(freed.wait, 5), "what the abandoned load built was never freed"
    assert built == ["weights"]


async def test_an_abandoned_function_that_fails_still_frees_what_it_half_built() -> None:
    release, freed = threading.Event(), threading.Event()

    def failing_load() -> None:
        release.wait(10)
        raise OSError("download failed")

    waiting = asyncio.ensure_future(in_daemon_thread(failing_load, name="failing", abandoned=freed.set))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await asyncio.to_thread(freed.wait, 5)
