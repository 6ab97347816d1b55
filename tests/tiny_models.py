"""Tiny, randomly initialised models built locally for tests (no network, < 1 s)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<eos>"]
WORDS = (
    "the a an of to and in is was it on for with as at by from this that what which who where "
    "capital france paris city river world hello hi yes no one two three four five six seven "
    "eight nine ten red green blue cat dog bird fish tree sun moon star sky sea user assistant "
    ". , ? ! : ' \""
).split()

# A ChatML-style template, so tests can exercise the chat path with the tiny model.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ' : ' + message['content'] + ' . ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant :' }}{% endif %}"
)


def _tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    # No pad token on purpose: the runtime must fall back to eos.
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def _model(vocab_size: int, eos_id: int, seed: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=512,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    with torch.no_grad():
        # Tied embeddings: a zero row gives <eos> a logit of exactly 0, while ~half the other
        # random logits are positive, so greedy decoding never stops early at <eos>.
        model.transformer.wte.weight[eos_id].zero_()
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id)
    return model.eval()


def build_tiny_gpt2(path: str | Path, *, chat: bool = False, seed: int = 0) -> Path:
    """Write a tiny GPT-2 (2 layers, 32 dims, word-level vocab) to ``path`` and return it.

    Weights are seeded, so the same ``seed`` always gives the same outputs. With ``chat``
    the tokenizer carries a chat template.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(CHAT_TEMPLATE if chat else None)
    model = _model(len(tok), tok.eos_token_id, seed)
    tok.save_pretrained(path)
    model.save_pretrained(path)
    return path


def build_tiny_sliding_window(path: str | Path, *, window: int = 6, seed: int = 0) -> Path:
    """A tiny Mistral-style model whose attention layers use a sliding window of ``window`` positions
    (transformers gives such a model sliding-window cache layers, which keep their own positions)."""
    from transformers import MistralConfig, MistralForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(None)
    eos = tok.eos_token_id
    config = MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, sliding_window=window, bos_token_id=eos,
        eos_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MistralForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[eos].zero_()  # as for the GPT-2: greedy decoding never stops early at <eos>
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos)
    tok.save_pretrained(path)
    model.save_pretrained(path)
    return path


def build_tiny_lora(base: str | Path, path: str | Path, *, seed: int = 1) -> Path:
    """A LoRA adapter (peft) for a tiny GPT-2 at ``base``, with non-zero random weights."""
    from peft import LoraConfig, get_peft_model

    path = Path(path)
    model = GPT2LMHeadModel.from_pretrained(base)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(path)
    return path
