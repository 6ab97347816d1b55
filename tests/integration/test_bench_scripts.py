"""The pipeline benchmarks run end to end and print their figures (tiny sizes: a smoke test, not a measurement)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, f"bench/{script}", "--n-latency", "20", "--n-throughput", "300", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rate(out: str, label: str) -> float:
    m = re.search(rf"^\s+{re.escape(label)}\s+(\d+) (?:req|jobs)/s", out, re.M)
    assert m, out
    return float(m.group(1))


def test_pipeline_bench_prints_latency_throughput_and_cpu_per_job() -> None:
    out = _run("pipeline.py", env={"TETHER_ADMISSION_BENCH": "1"})  # as deployed: it waits for the probe
    assert _rate(out, "raw request/reply") > 0
    assert _rate(out, "tether.infer") > 0
    assert "were errors" not in out  # an error reply is not a job done (bench/pipeline.py `failed`)
    for role in ("scheduler", "gateway", "worker", "nats-server"):
        assert re.search(rf"^\s+{role}\s+\d+\s+[\d.]+\s+[\d.]+$", out, re.M), out


def test_skeleton_bench_prints_the_floor_next_to_raw() -> None:
    out = _run("skeleton.py")
    row = re.compile(r"^\s+(raw request/reply|skeleton)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+x\s+(\d+)", re.M)
    rows = {m.group(1): float(m.group(2)) for m in row.finditer(out)}
    assert set(rows) == {"raw request/reply", "skeleton"}, out
    assert all(v > 0 for v in rows.values())
    for role in ("skeleton gateway", "skeleton scheduler", "skeleton worker"):
        assert role in out
