"""Loading options: LoRA adapters merged on load, --quantize refused without CUDA, --dtype support."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.worker.device_support import check_spec, cuda_available
from services.worker.runtimes import GenerationParams, RunRequest
from services.worker.runtimes.catalog import build_runtime, parse_model_spec
from tests.tiny_models import build_tiny_gpt2, build_tiny_lora
from tether import errors

PROMPT = "the capital of france is"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("lora-base") / "base")


@pytest.fixture(scope="module")
def adapter_dir(base_dir: Path) -> Path:
    return build_tiny_lora(base_dir, base_dir.parent / "sql-lora")


async def _greedy(spec_text: str, n: int = 12) -> str:
    runtime = build_runtime(parse_model_spec(spec_text))
    runtime.load()
    try:
        out = await runtime.run(RunRequest(job_id="w", input=PROMPT, params=GenerationParams(max_new_tokens=n)))
        return str(out.output)
    finally:
        runtime.close()


def _peft_reference(base: Path, adapter: Path, n: int = 12) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    enc = tok(PROMPT, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    return str(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def test_an_adapter_is_part_of_the_served_model_id(base_dir: Path, adapter_dir: Path) -> None:
    spec = parse_model_spec(f"tiny:1={base_dir};adapter={adapter_dir}")
    assert spec.model_id == "tiny+sql-lora" and spec.adapter == str(adapter_dir)
    builtin = parse_model_spec(f"smollm2-135m-instruct;adapter={adapter_dir}/;pin=true")
    assert builtin.key == ("smollm2-135m-instruct+sql-lora", "1") and builtin.pin


async def test_lora_adapter_is_merged_on_load(base_dir: Path, adapter_dir: Path) -> None:
    plain = await _greedy(f"tiny:1={base_dir}")
    adapted = await _greedy(f"tiny:1={base_dir};adapter={adapter_dir}")
    assert adapted != plain
    assert adapted == _peft_reference(base_dir, adapter_dir)


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantize_without_cuda_fails_with_a_clear_message(base_dir: Path, mode: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        check_spec(parse_model_spec(f"tiny:1={base_dir};quantize={mode}"))
    assert info.value.field == "quantize"
    assert "CUDA" in info.value.message and f"--quantize {mode}" in info.value.message


def test_bad_quantize_value_is_refused_when_parsing(base_dir: Path) -> None:
    with pytest.raises(errors.InvalidRequest, match="8bit, 4bit"):
        parse_model_spec(f"tiny:1={base_dir};quantize=3bit")


@pytest.mark.skipif(not cuda_available(), reason="bitsandbytes quantization needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
async def test_quantized_load_on_cuda(base_dir: Path, mode: str) -> None:
    pytest.importorskip("bitsandbytes")
    spec = f"tiny:1={base_dir};quantize={mode};device=cuda"
    check_spec(parse_model_spec(spec))
    text = await _greedy(spec, n=6)
    assert isinstance(text, str) and text


async def test_bfloat16_serves_on_cpu(base_dir: Path) -> None:
    spec = parse_model_spec(f"tiny:1={base_dir};dtype=bfloat16")
    check_spec(spec)  # supported here: no error
    runtime = build_runtime(spec)
    runtime.load()
    try:
        assert next(runtime.inner.model.parameters()).dtype == torch.bfloat16  # type: ignore[attr-defined]
        out = await runtime.run(RunRequest(job_id="bf", input=PROMPT, params=GenerationParams(max_new_tokens=4)))
        assert out.tokens_out == 4
    finally:
        runtime.close()


def test_cuda_device_without_cuda_is_refused(base_dir: Path) -> None:
    if cuda_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(errors.InvalidRequest, match="no CUDA GPU"):
        check_spec(parse_model_spec(f"tiny:1={base_dir};device=cuda"))
