"""Security is never silently off: --insecure warns, and a missing allowlist is an error in the log."""

from __future__ import annotations

from pathlib import Path

from tests.proc_helpers import Procs, poll, tether_env
from tether.natsserver import NatsServer


def test_insecure_warns_and_missing_allowlist_is_reported(tmp_path: Path, nats_server: NatsServer) -> None:
    procs = Procs(tmp_path)
    try:  # separate homes: each its own store (two schedulers migrating one fresh SQLite file race)
        secure = procs.start("scheduler", env=tether_env(tmp_path / "a", url=nats_server.url), name="secure")
        insecure_env = tether_env(tmp_path / "b", url=nats_server.url)
        insecure = procs.start("scheduler", "--insecure", env=insecure_env, name="insecure")
        for proc in (secure, insecure):
            try:
                poll(lambda p=proc: "scheduler started" in procs.output(p), timeout=60, what="scheduler up")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{procs.output(proc)[-3000:]}") from None
        assert procs.stop(secure) == 0 and procs.stop(insecure) == 0
    finally:
        procs.cleanup()
    secure_log, insecure_log = procs.output(secure), procs.output(insecure)
    assert "no allowlist at" in secure_log and "--insecure" in secure_log
    assert "WARNING: running with --insecure" in insecure_log
    assert "WARNING: running with --insecure" not in secure_log
