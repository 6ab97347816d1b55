"""`tether models publish` and `tether models verify` through the real command."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.proc_helpers import run_tether, tether_env
from tether.natsserver import NatsServer


def test_publish_then_verify(tmp_path: Path, nats_server: NatsServer) -> None:
    env = tether_env(tmp_path / "home", url=nats_server.url)
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(200_000))
    (model / "config.json").write_text("{}")

    unsigned = run_tether("models", "publish", str(model), "--model", "m", "--version", "1", env=env)
    assert unsigned.returncode != 0  # no publisher key yet

    assert run_tether("keys", "gen", "--role", "publisher", "--allow", env=env).returncode == 0
    r = run_tether("models", "publish", str(model), "--model", "m", "--version", "1", env=env)
    assert r.returncode == 0, r.stderr
    digest = re.search(r"digest ([0-9a-f]{64})", r.stdout).group(1)  # type: ignore[union-attr]
    assert "m:1" in r.stdout and "200.0 kB" in r.stdout  # the progress bar's last frame
    assert f"m:1=artifact:{digest}" in r.stdout

    v = run_tether("models", "verify", digest, env=env)
    assert v.returncode == 0, v.stderr
    assert "verified m:1" in v.stdout
    bad = run_tether("models", "verify", "0" * 64, env=env)
    assert bad.returncode == 1 and "missing" in bad.stderr
