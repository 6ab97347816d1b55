"""Fixtures shared by the engine tests: one tiny GPT-2 on disk and the naive runtime over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.worker.runtimes import Task, TransformersRuntime
from tests.tiny_models import build_tiny_gpt2


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (2 layers, 32 dims) written once per test session; tests only read it."""
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def naive(tiny_dir: Path) -> Iterator[TransformersRuntime]:
    """The one-``generate``-per-request runtime over ``tiny_dir``, loaded."""
    runtime = TransformersRuntime("tiny", "1", Task.GENERATE, tiny_dir)
    runtime.load()
    yield runtime
    runtime.close()
