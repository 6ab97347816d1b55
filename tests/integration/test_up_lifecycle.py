"""What `tether up` and `tether nats` leave behind when starting goes wrong, and readiness without echo."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import tether.natsserver as natsserver
from tests.conftest import start_system
from tests.proc_helpers import poll, processes_mentioning
from tests.tiny_models import build_tiny_gpt2
from tether.natsserver import NatsServer, server_binary
from tether.settings import Settings
from tether.up import _tether, _try_line, _wait_ready


def test_a_server_too_slow_to_listen_is_stopped_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = tmp_path / "slow-nats-server"  # e.g. recovering a large JetStream store
    slow.write_text(f"#!/bin/sh\nsleep 30\nexec {server_binary()} \"$@\"\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(natsserver, "server_binary", lambda: str(slow))
    store = tmp_path / "slow-store"
    server = NatsServer(store_dir=store, log_file=tmp_path / "logs" / "nats.log")
    with pytest.raises(RuntimeError, match=r"did not listen .* within 1s \(its log: .*nats.log\)"):
        server.start(timeout=1.0)
    assert server.proc is None
    assert processes_mentioning(str(store)) == []  # the wrapper (in its own session) was stopped too


async def test_ready_without_echo_probes_a_model_that_runs(tmp_path: Path, settings: Settings) -> None:
    tiny = build_tiny_gpt2(tmp_path / "tiny")
    spec = f"tiny-gpt2:1={tiny}"
    system = await start_system(settings, [spec])
    try:
        await _wait_ready(settings, settings.url, [spec], 60.0, since=0.0)  # raised (echo unknown) before
    finally:
        await system.close()


async def test_an_unreachable_server_is_reported_not_waited_on_forever(
    tmp_path: Path, settings: Settings
) -> None:
    url = f"nats://127.0.0.1:{natsserver.free_port()}"
    with pytest.raises(TimeoutError, match="cannot reach NATS"):
        await _wait_ready(settings, url, ["echo"], 2.0, since=0.0)


def test_the_try_line_names_a_model_that_runs() -> None:
    tether = _tether()  # what the shell runs: `tether` when it is on PATH, else this venv's path to it
    assert (tether == "tether" and shutil.which("tether")) or Path(tether).is_file(), tether
    assert _try_line(["echo"], "nats://127.0.0.1:4222") == f'{tether} infer "hello" --model echo'
    demo = _try_line(["echo", "smollm2-135m-instruct"], "nats://127.0.0.1:5000")
    assert demo.startswith(f"TETHER_NATS_URL=nats://127.0.0.1:5000 {tether} infer")
    assert demo.endswith("--model smollm2-135m-instruct")


def test_a_server_started_to_die_with_its_parent_goes_when_the_parent_is_killed(tmp_path: Path) -> None:
    """`tether up` and `tether nats` start their server so; a SIGKILLed `up` leaves no server behind."""
    store = tmp_path / "orphan-store"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tether.natsserver import NatsServer\n"
        f"s = NatsServer(store_dir=Path({str(store)!r}), die_with_parent=True).start()\n"
        "print(s.proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(server_pid)
        parent.kill()
        parent.wait()
        poll(lambda: processes_mentioning(str(store)) == [] or None, timeout=15, what="nats-server gone")
    finally:
        parent.kill()
        for p in processes_mentioning(str(store)):
            p.kill()
