"""The echo runtime's test aids: spec options (delay_ms, load_ms, fail, poison) and what each does."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.worker.runtimes import EchoRuntime, RunRequest, Task, build_runtime, parse_model_spec
from services.worker.runtimes.echo import EchoFaults, PoisonCrash
from tether import errors


def test_echo_options_parse_on_the_builtin_and_on_a_named_echo_model() -> None:
    spec = parse_model_spec("echo:1; delay_ms=50 ;fail=always;poison=BOOM")
    assert spec.key == ("echo", "1") and spec.runtime == "echo"
    assert spec.echo == EchoFaults(delay_ms=50, fail="always", poison="BOOM")
    assert parse_model_spec("echo;delay_ms=0").echo.is_default()
    named = parse_model_spec("slow:2=unused;task=echo;delay_ms=7")
    assert (named.key, named.task, named.echo.delay_ms) == (("slow", "2"), Task.ECHO, 7)
    assert parse_model_spec("echo").echo == EchoFaults()  # no option, no fault
    assert parse_model_spec("echo;poison=a=b").echo.poison == "a=b"  # a marker may contain '='
    assert parse_model_spec("echo;load_ms=30").echo == EchoFaults(load_ms=30)


def test_load_ms_makes_the_load_take_that_long() -> None:
    runtime = build_runtime(parse_model_spec("echo;load_ms=200"))
    t0 = time.perf_counter()
    runtime.load()
    assert time.perf_counter() - t0 >= 0.19


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("echo;delay_ms=fast", "delay_ms"),
        ("echo;delay_ms=-1", "delay_ms"),
        ("echo;delay_ms=600001", "delay_ms"),
        ("echo;load_ms=soon", "load_ms must be an integer"),
        ("echo;fail=sometimes", "fail must be one of never, always"),
        ("echo;poison=", "bad option"),
        ("echo;colour=red", "delay_ms="),  # the error lists the echo options too
        ("x:1=/m;delay_ms=5", "echo models only"),
        ("smollm2-135m-instruct;fail=always", "echo models only"),
    ],
)
def test_bad_echo_options_are_rejected_naming_the_spec(text: str, mentions: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=mentions) as info:
        parse_model_spec(text)
    assert info.value.field == "model"
    assert repr(text) in info.value.message


def test_build_runtime_carries_the_faults() -> None:
    runtime = build_runtime(parse_model_spec("echo;delay_ms=20;poison=X"))
    assert isinstance(runtime, EchoRuntime)
    assert runtime.faults == EchoFaults(delay_ms=20, poison="X")


async def test_delay_sleeps_without_blocking_the_loop() -> None:
    runtime = EchoRuntime(faults=EchoFaults(delay_ms=200))
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(runtime.run(RunRequest(job_id=f"j{i}", input=f"x{i}")) for i in range(20)))
    elapsed = time.perf_counter() - t0
    assert [o.output for o in outs] == [f"x{i}" for i in range(20)]
    assert 0.19 <= elapsed < 1.5, elapsed  # twenty concurrent runs overlap: about one delay, not twenty


async def test_fail_always_is_a_retryable_worker_failure() -> None:
    runtime = EchoRuntime(faults=EchoFaults(fail="always"))
    for i in range(3):
        with pytest.raises(errors.WorkerFailed) as info:
            await runtime.run(RunRequest(job_id=f"j{i}", input="fine input"))
        assert info.value.retryable and info.value.job_id == f"j{i}"
        assert "fail=always" in info.value.message


async def test_poison_crashes_only_inputs_with_the_marker() -> None:
    runtime = EchoRuntime(faults=EchoFaults(poison="POISON"))
    assert (await runtime.run(RunRequest(job_id="ok", input="harmless"))).output == "harmless"
    for bad in ("a POISON pill", ["x", "POISON"], [{"role": "user", "content": "POISON"}]):
        with pytest.raises(PoisonCrash, match="POISON"):
            await runtime.run(RunRequest(job_id="p", input=bad))
    assert not issubclass(PoisonCrash, errors.TetherError)  # a crash, not a Tether error
    assert (await runtime.run(RunRequest(job_id="ok2", input=["poison"]))).output == [
        "poison"
    ]  # case matters
