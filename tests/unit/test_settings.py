"""Settings from the environment and the CLI flags that feed them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tether import cli
from tether.settings import Settings


@pytest.mark.parametrize(
    ("value", "insecure"),
    [("", False), ("0", False), ("false", False), ("False", False), ("off", False), ("NO", False),
     ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True)],
)
def test_only_an_explicit_yes_turns_verification_off(
    monkeypatch: pytest.MonkeyPatch, value: str, insecure: bool
) -> None:
    monkeypatch.setenv("TETHER_INSECURE", value)
    assert Settings.from_env().insecure is insecure


def test_the_models_flag_reaches_the_processes_tether_up_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_MODELS", "before")  # recorded, so the value the CLI sets is undone after
    monkeypatch.setenv("TETHER_INSECURE", "0")
    s = cli._settings(argparse.Namespace(cmd="status", models="echo,other"))
    assert s.models == ["echo", "other"]
    import os

    assert os.environ["TETHER_MODELS"] == "echo,other"  # children inherit the environment


@pytest.mark.parametrize(("value", "gomaxprocs"), [(None, None), ("", None), ("0", 0), ("3", 3)])
def test_nats_gomaxprocs_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, gomaxprocs: int | None
) -> None:
    if value is None:
        monkeypatch.delenv("TETHER_NATS_GOMAXPROCS", raising=False)
    else:
        monkeypatch.setenv("TETHER_NATS_GOMAXPROCS", value)
    assert Settings.from_env().nats_gomaxprocs == gomaxprocs


@pytest.mark.parametrize("concurrency", [0, 65_537])
def test_a_worker_refuses_a_concurrency_its_heartbeats_could_not_announce(tmp_path: Path, concurrency: int) -> None:
    from services.worker.service import Worker

    with pytest.raises(ValueError, match="worker_concurrency"):
        Worker(Settings(home=tmp_path, worker_concurrency=concurrency), specs=[])
