"""Security is never silently off: --insecure warns, and a missing allowlist is an error in the log."""

from __future__ import annotations

from pathlib import Path

from tests.proc_helpers import Procs, poll, tether_env
from tether.natsserver import NatsServer


def test_insecure_warns_and_missing_allowlist_is_reported(tmp_path: Path, nats_server: NatsServer) -> None:
    procs = Procs(tmp_path)
    env = tether_env(tmp_path / "home", url=nats_server.url)
    try:
        secure = procs.start("scheduler", env=env, name="secure")
        insecure = procs.start("scheduler", "--insecure", env=env, name="insecure")
        poll(lambda: "scheduler started" in procs.output(secure), timeout=60, what="secure scheduler up")
        poll(lambda: "scheduler started" in procs.output(insecure), timeout=60, what="insecure scheduler up")
        assert procs.stop(secure) == 0 and procs.stop(insecure) == 0
    finally:
        procs.cleanup()
    secure_log, insecure_log = procs.output(secure), procs.output(insecure)
    assert "no allowlist at" in secure_log and "--insecure" in secure_log
    assert "WARNING: running with --insecure" in insecure_log
    assert "WARNING: running with --insecure" not in secure_log
