"""settle_heap: what a service process does to the cyclic collector once it has started."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether import tasks


@pytest.fixture
def gc_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    tasks._service_process = False


def test_outside_a_service_process_it_changes_nothing(gc_restored: None) -> None:
    before = (gc.get_threshold(), gc.get_freeze_count())
    tasks.settle_heap()
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_in_a_service_process_it_freezes_startup_and_raises_the_young_threshold(gc_restored: None) -> None:
    tasks._service_process = True
    _, older, oldest = gc.get_threshold()
    tasks.settle_heap()
    assert gc.get_freeze_count() > 1000  # this process's modules and objects so far
    assert gc.get_threshold() == (tasks.GC_YOUNG_THRESHOLD, older, oldest)


def test_run_main_marks_the_process_and_writes_a_profile_when_asked(tmp_path: Path) -> None:
    code = (
        "import gc\n"
        "from tether.tasks import run_main, settle_heap, GC_YOUNG_THRESHOLD\n"
        "async def main():\n"
        "    settle_heap()\n"
        "    return gc.get_threshold()[0]\n"
        "assert run_main(main()) == GC_YOUNG_THRESHOLD\n"
    )
    env = {**os.environ, "TETHER_CPROFILE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code, "probe"], check=True, env=env, timeout=60)
    profiles = list(tmp_path.glob("probe-*.prof"))
    assert len(profiles) == 1 and profiles[0].stat().st_size > 0
