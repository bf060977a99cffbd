"""Tiny Qwen2 / Llama causal LMs built from config in code.

The weights are a pure function of ``TinyModelConfig``: the build seeds torch's CPU generator with
``cfg.seed`` inside ``torch.random.fork_rng``, so two builds are bitwise equal and the caller's RNG
stream is left exactly where it was.

Attention is ``eager``: on CPU it matches ``sdpa`` here (both reproduce generate's raw-logit
log-probs with a teacher-forced forward to ~5e-7, left padding included), and its plain
matmul + masked softmax has no backend selection that could change between a generate call and a
training forward on another host.
"""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from roll.models.config import TinyModelConfig

ATTN_IMPLEMENTATION = "eager"

_ARCHS: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
}


def tiny_model_hf_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The HF config of the tiny model: shape from ``cfg``, vocab size and token ids from ``tokenizer``."""
    config_cls, _ = _ARCHS[cfg.arch]
    return config_cls(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Build a freshly initialised tiny causal LM in fp32 on CPU, in eval mode.

    Args:
        cfg: architecture, shape and seed.
        tokenizer: fixes ``vocab_size = len(tokenizer)`` and the pad/bos/eos ids of the model config
            and of ``model.generation_config``.

    Returns:
        ``Qwen2ForCausalLM`` or ``LlamaForCausalLM`` with tied input/output embeddings. The same
        ``cfg`` and tokenizer always give bitwise-equal weights.
    """
    _, model_cls = _ARCHS[cfg.arch]
    hf_config = tiny_model_hf_config(cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = model_cls(hf_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()
