"""nats-server's GOMAXPROCS: half the cores under ``tether up``, as configured, or the environment's."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tether.natsserver import NatsServer, colocated_gomaxprocs, server_env


def _server_env(server: NatsServer) -> dict[str, str]:
    assert server.proc is not None
    return psutil.Process(server.proc.pid).environ()


def test_colocated_gomaxprocs_is_half_the_cores_and_at_least_one() -> None:
    assert [colocated_gomaxprocs(n) for n in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 8]


def test_server_env_sets_gomaxprocs_only_when_asked_and_not_already_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    assert server_env(0) is None
    assert server_env(3)["GOMAXPROCS"] == "3"  # type: ignore[index]
    monkeypatch.setenv("GOMAXPROCS", "7")
    assert server_env(3) is None  # the operator's own setting is passed through


def test_the_server_runs_with_the_gomaxprocs_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    server = NatsServer(store_dir=tmp_path / "js", gomaxprocs=1, die_with_parent=True)
    try:
        server.start()
        assert _server_env(server).get("GOMAXPROCS") == "1"
    finally:
        server.stop()
    plain = NatsServer(store_dir=tmp_path / "js2", die_with_parent=True)
    try:
        plain.start()
        assert "GOMAXPROCS" not in _server_env(plain)
    finally:
        plain.stop()
