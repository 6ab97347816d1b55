"""Any-language clients: the official Node.js NATS client (``@nats-io/transport-node``, installed from
npm by this test into a cache directory) sends JSON to ``tether.infer`` and replays RESULTS."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tether.settings import Settings

SCRIPT = Path(__file__).with_name("node_client.mjs")
PACKAGES = ("@nats-io/transport-node@3", "@nats-io/jetstream@3")
CACHE = Path(os.environ.get("TETHER_NODE_CACHE", Path(tempfile.gettempdir()) / "tether-node-clients"))


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (.ci/run installs them; apt-get install nodejs npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / "node_modules" / "@nats-io" / "jetstream").is_dir():
        (CACHE / "package.json").write_text('{"name": "tether-node-clients", "private": true, "type": "module"}')
        r = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES],
            cwd=CACHE, capture_output=True, text=True, timeout=300, check=False,
        )
        assert r.returncode == 0, f"npm install failed:\n{r.stdout}\n{r.stderr}"
    return CACHE / "node_modules"


async def test_node_client_requests_and_replays_results(node_modules: Path, echo_system, settings: Settings) -> None:
    script = node_modules.parent / SCRIPT.name  # next to node_modules, so the imports resolve
    shutil.copyfile(SCRIPT, script)
    inputs = ["from node", "second"]
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), settings.url, *inputs, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    data = json.loads(out.decode().strip().splitlines()[-1])
    replies = data["replies"]
    assert [r["result"] for r in replies] == inputs, data
    assert all(r["jobId"] and r["workerId"] == echo_system.workers[0].worker_id for r in replies)
    replayed = {r["result"]["jobId"]: r for r in data["replayed"]}
    assert set(replayed) == {r["jobId"] for r in replies}
    for reply in replies:
        stored = replayed[reply["jobId"]]
        assert stored["subject"] == f"tether.results.{reply['jobId']}"
        assert stored["result"]["status"] == "completed" and stored["result"]["result"] == reply["result"]
        assert stored["result"]["tenantId"] == "node"
