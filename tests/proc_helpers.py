"""Run Tether as real OS processes in tests: the `tether` command, a clean environment,
polling instead of fixed sleeps, and cleanup that never leaves a process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

_SCRIPT = Path(sys.executable).parent / "tether"
TETHER = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "tether.cli"]


def tether_env(
    home: Path, *, port: int | None = None, url: str | None = None, **extra: str
) -> dict[str, str]:
    """os.environ without any TETHER_* variable, then TETHER_HOME and the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["TETHER_HOME"] = str(home)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if port is not None:
        env["TETHER_NATS_PORT"] = str(port)
    if url is not None:
        env["TETHER_NATS_URL"] = url
    env.update(extra)
    return env


def run_tether(*args: str, env: dict[str, str], timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """One short-lived `tether ...` command, output captured as text."""
    return subprocess.run(
        [*TETHER, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def poll(fn: Callable[[], T | None], *, timeout: float, interval: float = 0.5, what: str = "condition") -> T:
    """Call ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Procs:
    """Long-running `tether` processes started by one test, each logging to a file.

    ``cleanup()`` SIGKILLs whatever is still alive, descendants included.
    """

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.descendants: dict[int, psutil.Process] = {}
        self.logs: dict[int, Path] = {}

    def start(self, *args: str, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*TETHER, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def record_children(self, proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
        """The descendants of ``proc`` right now (remembered for cleanup)."""
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.descendants.update((k.pid, k) for k in kids)
        return kids

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
        """SIGTERM, then wait up to ``timeout`` for the exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"pid {proc.pid} still running {timeout:.0f}s after SIGTERM:\n{self.output(proc)[-3000:]}"
            ) from None

    def cleanup(self) -> None:
        for proc in self.procs:
            self.record_children(proc)
        for child in self.descendants.values():
            try:
                child.kill()  # psutil checks the create time: a reused pid is not touched
            except psutil.Error:
                pass
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes with ``text`` in an argument (a home or store dir: what a test left running)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(text in arg for arg in p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found
