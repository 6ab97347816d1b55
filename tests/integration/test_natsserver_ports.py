"""``NatsServer.start`` on a port taken between its pick and nats-server's bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tether import natsserver
from tether.natsserver import NatsServer


def test_a_picked_port_taken_before_the_bind_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    picks = iter([busy, natsserver.free_port()])  # the first pick loses the race to `taken`
    monkeypatch.setattr(natsserver, "free_port", lambda: next(picks))
    server = NatsServer(store_dir=tmp_path / "js", log_file=tmp_path / "nats.log", die_with_parent=True)
    try:
        server.start()
        assert server.port != busy and server.proc is not None and server.proc.poll() is None
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as conn:
            assert conn.recv(4) == b"INFO"  # nats-server itself answers on the new port
    finally:
        server.stop()
        taken.close()


def test_a_port_given_that_is_taken_is_an_error_at_once(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        server = NatsServer(store_dir=tmp_path / "js", port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="in use already"):
            server.start()
        assert server.proc is None
    finally:
        taken.close()


def test_a_server_that_cannot_start_fails_after_its_tries(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("this is { not a config\n")
    server = NatsServer(store_dir=tmp_path / "js", config=bad, log_file=tmp_path / "nats.log")
    with pytest.raises(RuntimeError, match="exited"):
        server.start(timeout=5)
    assert server.proc is None
