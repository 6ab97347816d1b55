"""``GET /metrics``: valid Prometheus text (checked line by line against the exposition format),
with counters, a duration histogram, the window SLIs (stale-cache rate included) and the fleet."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.gateway.http.metrics import escape
from tests.http_helpers import HttpSystem, http_system
from tether.control_cli import order
from tether.settings import Settings

ECHO = {"tenantId": "acme", "modelId": "echo", "version": "1"}
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf'^({_NAME})(?:\{{((?:{_NAME}="(?:[^"\\\n]|\\[\\"n])*",?)*)\}})? (\S+)$')
_LABEL = re.compile(rf'({_NAME})="((?:[^"\\\n]|\\[\\"n])*)"')


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a Prometheus text exposition; AssertionError on anything the format forbids."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram") and name not in types, line
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        name, labels_text, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no TYPE line before it"
        if types[family] == "counter":
            assert name.endswith("_total"), name
        labels = tuple(_LABEL.findall(labels_text or ""))
        key = (name, labels)
        assert key not in samples, f"duplicate series {key}"
        samples[key] = float(value)
    for (name, labels), count in samples.items():  # histograms: cumulative buckets ending at +Inf = count
        if name.endswith("_count") and types.get(name[: -len("_count")]) == "histogram":
            base = name[: -len("_count")]
            buckets = [(float(dict(lb)["le"]), v) for (n, lb), v in samples.items()
                       if n == base + "_bucket" and dict(lb)["model"] == dict(labels)["model"]]
            assert buckets == sorted(buckets) and buckets[-1] == (math.inf, count), buckets
            assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    return samples


@pytest_asyncio.fixture
async def hs(settings: Settings) -> AsyncIterator[HttpSystem]:
    async with http_system(settings, ["echo"]) as h:
        yield h


async def test_metrics_are_valid_prometheus_text_with_the_slis(hs: HttpSystem) -> None:
    c = hs.client
    for i in range(3):
        assert (await c.post("/infer", json={**ECHO, "input": f"x{i}"}, headers=hs.auth)).status_code == 200
    worker = hs.system.workers[0]
    [evicted] = await order(hs.system.gateway.nc, "evict", worker.worker_id, {"modelId": "echo"})  # type: ignore[attr-defined]
    assert evicted["evicted"] is True
    cold = await c.post("/infer", json={**ECHO, "input": "cold"}, headers=hs.auth)
    assert cold.status_code == 200 and cold.json()["usage"]["coldStart"] is True
    assert (await c.post("/infer", json={**ECHO, "modelId": "nope", "input": "x"}, headers=hs.auth)).status_code == 404

    r = await c.get("/metrics", headers=hs.auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    s = parse(r.text)
    assert s[("tether_gateway_requests_total", (("model", "echo"), ("outcome", "ok")))] == 4
    assert s[("tether_gateway_requests_total", (("model", "_unknown"), ("outcome", "model_unknown")))] == 1
    assert s[("tether_gateway_cold_starts_total", (("model", "echo"),))] == 1
    assert s[("tether_gateway_request_duration_seconds_count", (("model", "echo"),))] == 4
    assert s[("tether_sli_stale_cache_ratio", ())] == 0.25
    assert s[("tether_sli_success_ratio", ())] == 0.8
    assert s[("tether_workers", (("health", "HEALTHY"),))] == 1
    assert s[("tether_model_warm_replicas", (("model", "echo"), ("version", "1")))] == 1


def test_label_values_are_escaped() -> None:
    assert escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert parse('# HELP x_total h\n# TYPE x_total counter\nx_total{m="a\\"b"} 1\n') == {
        ("x_total", (("m", 'a\\"b'),)): 1.0
    }


async def test_made_up_model_ids_do_not_add_series(hs: HttpSystem) -> None:
    """A client can send any model id; each unknown one must not become a series of its own."""
    for i in range(50):
        r = await hs.client.post("/infer", json={"tenantId": "acme", "modelId": f"m{i}", "input": "x"}, headers=hs.auth)
        assert r.status_code == 404
    text = (await hs.client.get("/metrics", headers=hs.auth)).text
    unknown = [line for line in text.splitlines() if line.startswith("tether_gateway_requests_total{")
               and 'outcome="model_unknown"' in line]
    assert len(unknown) == 1 and 'model="_unknown"' in unknown[0], unknown[:5]


async def test_a_tenant_id_with_rich_markup_does_not_break_the_job_listing(
    hs: HttpSystem, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from tether.status import jobs_list

    r = await hs.client.post("/infer", json={"tenantId": "[/]", "modelId": "echo", "input": "x"})
    assert r.status_code == 200, r.text
    job_id, deadline = r.json()["jobId"], time.monotonic() + 10
    store = hs.system.scheduler.store  # type: ignore[attr-defined]
    while ((await store.get(job_id)) or {}).get("status") != "COMPLETED":  # its row is written after the reply
        assert time.monotonic() < deadline, "the scheduler never recorded the job COMPLETED"
        await asyncio.sleep(0.05)
    assert await jobs_list(settings, status="completed", limit=10) == 0  # lower case works too
    assert "[/]" in capsys.readouterr().out


async def test_the_views_still_answer_while_nats_is_away(hs: HttpSystem, nats_server) -> None:  # type: ignore[no-untyped-def]
    """The fleet view is in memory: with JetStream unreachable, /models, /api/overview and /metrics
    still render it (queue depths and other gateways' SLIs left out) instead of answering 500."""
    nats_server.stop()
    await asyncio.sleep(0.5)  # past the backlog's cached depths
    try:
        for path in ("/models", "/api/overview", "/metrics"):
            t0 = time.monotonic()
            r = await hs.client.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            assert time.monotonic() - t0 < 20
        models = (await hs.client.get("/models")).json()["models"]
        assert any(m["modelId"] == "echo" for m in models)
        # an API key cannot be checked meanwhile: a retryable 503, not a crash (and not let through)
        r = await hs.client.get("/models", headers=hs.auth)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", r.text
    finally:
        nats_server.start()
