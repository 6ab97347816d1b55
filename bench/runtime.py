"""Runtime benchmark: the naive one-request-at-a-time runtime vs the batching engine, same model, same run.

(a) naive: ``TransformersRuntime`` -- one blocking ``generate`` per request, in arrival order
    (what the seed pilot's ``model_runtime.py`` does);
(b) engine: ``EngineRuntime`` -- continuous batching with streaming.

For each concurrency level C, C clients each send requests back to back (closed loop) until
N requests are done (default 3xC, at least 16: the steady state of a loaded server, not just
one wave's ramp-up and tail); greedy decoding with a fixed ``max_new_tokens``, prompts of different
lengths. Prints tokens/s, p50/p95 request latency and, for the engine, p50/p95 time to
first streamed token (the naive runtime's first token arrives with its last).

    .venv/bin/python bench/runtime.py [--model tiny|smollm2|both] [--tokens 32] [--levels 1,8,32]
                                      [--requests N] [--max-batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from services.worker.engine import EngineRuntime
from services.worker.runtimes import GenerationParams, ModelRuntime, RunRequest, TransformersRuntime
from services.worker.runtimes.base import Delta
from services.worker.runtimes.catalog import ModelSpec, build_runtime, builtin_spec, parse_model_spec

TINY_PROMPTS = [
    "hello",
    "the capital of france is",
    "one two three four five six seven eight nine ten",
    "what is the sky ? the sky is blue and the sea is green and the sun is red",
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write one sentence about the sea and the ships that sail on it at night.",
    "Explain in a few words why the sky is blue, as if to a child who asked at bedtime.",
]


@dataclass(slots=True)
class Figures:
    tokens_per_s: float
    p50_ms: float
    p95_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    requests: int
    tokens: int


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run_level(runtime: ModelRuntime, prompts: list[str], tokens: int, concurrency: int, total: int) -> Figures:
    latencies: list[float] = []
    ttfts: list[float] = []
    produced = 0
    counter = iter(range(total))

    async def client() -> None:
        nonlocal produced
        for i in counter:
            first: list[float] = []
            started = time.perf_counter()

            def on_delta(_: Delta, first: list[float] = first) -> None:
                if not first:
                    first.append(time.perf_counter())

            request = RunRequest(
                job_id=f"b{i}",
                input=prompts[i % len(prompts)],
                params=GenerationParams(max_new_tokens=tokens),
                on_delta=on_delta,
            )
            result = await runtime.run(request)
            done = time.perf_counter()
            latencies.append((done - started) * 1000)
            ttfts.append(((first[0] if first else done) - started) * 1000)
            produced += result.tokens_out

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Figures(
        tokens_per_s=produced / elapsed,
        p50_ms=statistics.median(latencies),
        p95_ms=pct(latencies, 0.95),
        ttft_p50_ms=statistics.median(ttfts),
        ttft_p95_ms=pct(ttfts, 0.95),
        requests=len(latencies),
        tokens=produced,
    )


def load_pair(spec: ModelSpec, max_batch: int) -> tuple[TransformersRuntime, EngineRuntime]:
    naive = build_runtime(replace(spec, engine="naive"))
    engine = build_runtime(spec, max_batch=max_batch)
    assert isinstance(naive, TransformersRuntime) and isinstance(engine, EngineRuntime)
    for runtime in (naive, engine):
        started = time.perf_counter()
        runtime.load()
        print(f"  loaded {type(runtime).__name__} in {time.perf_counter() - started:.1f}s", flush=True)
    return naive, engine


async def bench_model(name: str, spec: ModelSpec, prompts: list[str], args: argparse.Namespace) -> None:
    print(f"\n## {name}: {args.tokens} new tokens per request, greedy\n", flush=True)
    naive, engine = load_pair(spec, args.max_batch)
    rows: list[str] = []
    base: dict[int, Figures] = {}
    try:
        for c in args.levels:
            total = args.requests or max(16, 3 * c)
            await run_level(engine, prompts, 4, min(c, 4), min(c, 4))  # warm-up
            for label, runtime in (("naive", naive), ("engine", engine)):
                fig = await run_level(runtime, prompts, args.tokens, c, total)
                if label == "naive":
                    base[c] = fig
                speedup = fig.tokens_per_s / base[c].tokens_per_s
                ttft = f"{fig.ttft_p50_ms:.0f} / {fig.ttft_p95_ms:.0f}" if label == "engine" else "= latency"
                rows.append(
                    f"| {label} | {c} | {fig.requests} | {fig.tokens_per_s:,.1f} | {speedup:.2f}x "
                    f"| {fig.p50_ms:,.0f} | {fig.p95_ms:,.0f} | {ttft} |"
                )
                print(rows[-1], flush=True)
        if engine.engine is not None:
            s = engine.engine.stats
            print(f"\n  engine: {s.steps} steps, mean batch {s.mean_batch:.1f}, largest {s.largest_batch}", flush=True)
    finally:
        naive.close()
        engine.close()
    print("\n| runtime | concurrency | requests | tokens/s | vs naive | p50 ms | p95 ms | TTFT p50 / p95 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2", "both"], default="both")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: max(16, 3*C))")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--cache", default=str(Path(".tether") / "cache"), help="GGUF conversion cache")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    if args.model in ("tiny", "both"):
        from tests.tiny_models import build_tiny_gpt2

        with tempfile.TemporaryDirectory() as tmp:
            path = build_tiny_gpt2(Path(tmp) / "tiny-gpt2")
            await bench_model("tiny GPT-2 (2 layers, 32 dims)", parse_model_spec(f"tiny:1={path}"), TINY_PROMPTS, args)
    if args.model in ("smollm2", "both"):
        spec = builtin_spec("smollm2-135m-instruct", convert_cache=args.cache)
        await bench_model("SmolLM2-135M-Instruct (float32, CPU)", spec, CHAT_PROMPTS, args)


if __name__ == "__main__":
    asyncio.run(main())
