"""The dashboard in headless Chromium: nodes, models, SLIs and a job submitted during the test, which
appears (queued) and then completes on the page without a reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.worker.runtimes.catalog import parse_model_spec
from services.worker.service import Worker
from tests.browser import chromium, chromium_path
from tests.http_helpers import HOLD_KEYS, HttpSystem, hold_model, http_system
from tether.security import ensure_dev_trust
from tether.settings import Settings

pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="chromium is not installed (.ci/run installs Debian's chromium package)"
)


@pytest_asyncio.fixture
async def hs(settings: Settings) -> AsyncIterator[HttpSystem]:
    # the "later" job must still be queued when the test's late worker comes up, after Chromium has
    # listed it: on a slow machine that can take longer than the default 10 s queue wait
    settings.queue_wait_s = 60.0
    async with http_system(settings, ["echo"]) as system:
        await hold_model(settings, "later")
        yield system


def _row(job_id: str) -> str:
    return f"document.querySelector('#jobs tr[data-job-id={json.dumps(job_id)}]')"


async def test_a_job_appears_and_completes_live(hs: HttpSystem, settings: Settings, tmp_path: Path) -> None:
    async with chromium(tmp_path / "profile") as page:
        await page.goto(hs.url + "/")
        wid = hs.system.workers[0].worker_id  # type: ignore[attr-defined]
        await page.wait_for(
            f"document.querySelector('#nodes tr[data-worker-id=\"{wid}\"]')?.dataset.health === 'HEALTHY'",
            what=f"worker {wid} HEALTHY in the nodes table",
        )
        assert await page.eval("document.querySelector('#nodes tbody').innerText.includes('echo:1 warm')")

        # a job for a model no live worker serves yet: it waits in the queue
        submit = asyncio.create_task(
            hs.client.post("/infer", json={"tenantId": "web", "modelId": "later", "input": "on the page"})
        )
        job_id = await page.wait_for(
            "[...document.querySelectorAll('#jobs tbody tr')].find(r => r.innerText.includes('later:1'))?.dataset.jobId",
            what="the submitted job listed",
        )
        status = await page.eval(f"{_row(job_id)}.dataset.status")
        assert status in ("QUEUED", "RESERVED", "RETRYING"), status

        late_key = [i for i in ensure_dev_trust(settings, extra_workers=HOLD_KEYS) if i.role == "worker"][-2]
        worker = Worker(settings, identity=late_key, specs=[parse_model_spec("later:1=none;task=echo")])
        await worker.start()
        try:
            await page.wait_for(f"{_row(job_id)}?.dataset.status === 'COMPLETED'", what=f"job {job_id} COMPLETED")
            reply = (await asyncio.wait_for(submit, 20)).json()
            assert reply["jobId"] == job_id and reply["result"] == "on the page"
            await page.wait_for(
                "Number(document.querySelector('[data-kpi=\"requests\"] b').textContent) >= 1",
                what="the request counted in the SLIs",
            )
            await page.wait_for("!!document.querySelector('#latency rect[data-model=\"later\"]')", what="latency bar")
            await page.wait_for("!!document.querySelector('#throughput polyline')", what="throughput chart")
            assert await page.eval("document.querySelector('[data-kpi=\"success rate\"] b').textContent") == "100.0%"
            png = await page.screenshot()
            assert png.startswith(b"\x89PNG")
            await asyncio.to_thread((tmp_path / "dashboard.png").write_bytes, png)
        finally:
            await worker.close()
