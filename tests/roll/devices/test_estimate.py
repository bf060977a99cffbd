"""Memory estimates against hand-computed bytes, and parameter counts against real transformers models."""

from __future__ import annotations

import pytest
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from roll.devices import (
    RoleNeeds,
    estimate_memory,
    estimate_params_from_hf_config,
    kv_cache_bytes,
    kv_cache_bytes_from_hf_config,
)
from roll.devices.estimate import format_bytes, lora_adapter_params
from roll.models.config import TinyModelConfig
from roll.models.tiny import build_tiny_model, tiny_model_hf_config
from roll.models.tokenizer import build_tokenizer

B = 10**9  # one billion parameters

SMOLLM2_135M = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "tie_word_embeddings": True,
}


def train(n_params: int, dtype_bytes: int, **kwargs) -> RoleNeeds:
    return RoleNeeds("actor", "train", n_params, dtype_bytes, **kwargs)


def test_full_training_fp32_adam_no_zero():
    # 1e9 params, fp32: weights 4 + grads 4 + Adam moments 2 x 4 = 16 bytes/param -> 16e9 bytes.
    # No master copy: the weights already are fp32.
    est = estimate_memory(train(B, 4))
    assert est.parts == {"weights": 4 * B, "grads": 4 * B, "Adam": 8 * B}
    assert est.total == 16 * B
    # 4e9 B = 3.7 GiB, 8e9 B = 7.5 GiB, 16e9 B = 14.9 GiB.
    assert est.describe() == "~14.9 GiB per GPU (weights 3.7 + grads 3.7 + Adam 7.5, ZeRO-0 over 1 GPU)"


def test_full_training_bf16_keeps_an_fp32_master_copy():
    # bf16: weights 2 + grads 2 + Adam 8 + fp32 master 4 = 16 bytes/param -> 16e9 bytes.
    est = estimate_memory(train(B, 2))
    assert est.parts == {"weights": 2 * B, "grads": 2 * B, "Adam": 8 * B, "fp32 master": 4 * B}
    assert est.total == 16 * B


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        # bf16 over 8 workers; optimizer part = Adam 8 + master 4 = 12 bytes/param.
        (0, 2 * B + 2 * B + 12 * B),  # nothing sharded: 16e9
        (1, 2 * B + 2 * B + 12 * B // 8),  # optimizer / 8: 2 + 2 + 1.5 = 5.5e9
        (2, 2 * B + (2 * B + 12 * B) // 8),  # grads + optimizer / 8: 2 + 14/8 = 3.75e9
        (3, (2 * B + 2 * B + 12 * B) // 8),  # everything / 8: 16/8 = 2e9
    ],
)
def test_zero_stages_shard_over_dp(stage, expected):
    assert estimate_memory(train(B, 2, zero_stage=stage), dp_size=8).total == expected


def test_dp_size_hint_is_used_when_no_dp_size_is_given():
    needs = train(B, 2, zero_stage=3, dp_size_hint=4)
    assert estimate_memory(needs).total == 16 * B // 4  # 4e9
    assert estimate_memory(needs, dp_size=8).total == 16 * B // 8  # the planner's size wins
    assert estimate_memory(needs).describe().endswith("ZeRO-3 over 4 GPUs)")


def test_lora_trains_only_the_adapter():
    # Adapter of rank 16 on 7 targets of a 4096-wide, 32-layer model:
    # 2 (A and B) x 16 x 4096 x 32 x 7 = 29,360,128 params.
    adapter = 2 * 16 * 4096 * 32 * 7
    assert lora_adapter_params(16, 4096, 32) == adapter == 29_360_128
    needs = train(7 * B, 2, lora_rank=16, hidden_size=4096, num_layers=32)
    est = estimate_memory(needs)
    assert est.parts == {
        "weights": (7 * B + adapter) * 2,  # frozen base + adapter, bf16
        "grads": adapter * 2,
        "Adam": adapter * 8,
        "fp32 master": adapter * 4,
    }
    assert "LoRA rank 16" in est.describe()
    # A given adapter size replaces the estimate.
    given = estimate_memory(train(7 * B, 2, lora_rank=16, lora_params=10_000_000))
    assert given.parts["grads"] == 2 * 10_000_000
    with pytest.raises(ValueError, match="hidden_size and num_layers"):
        train(7 * B, 2, lora_rank=16)


def test_kv_cache_bytes():
    # 2 (K, V) x 32 layers x 8 kv heads x 128 head dim x 2 bytes = 131,072 bytes per token.
    assert kv_cache_bytes(32, 8, 128, 2, 1) == 131_072
    assert kv_cache_bytes(32, 8, 128, 2, 1000) == 131_072_000
    # SmolLM2-135M: 2 x 30 x 3 x (576 / 9 = 64) x 4 bytes (fp32) = 46,080 bytes per token.
    assert kv_cache_bytes_from_hf_config(SMOLLM2_135M, 4, 10) == 460_800


def test_infer_frozen_and_cpu_roles():
    # Rollout: weights 1e9 x 2 + its batch's 8e9-byte KV cache split over 4 workers, + activations.
    rollout = RoleNeeds("rollout", "infer", B, 2, kv_cache_bytes=8 * B, activation_bytes=10**8)
    est = estimate_memory(rollout, dp_size=4)
    assert est.parts == {"weights": 2 * B, "KV cache": 2 * B, "activations": 10**8}
    assert est.describe() == (
        "~3.8 GiB per GPU (weights 1.9 + KV cache 1.9 + activations 0.1, KV cache split over 4 GPUs)"
    )
    reference = estimate_memory(RoleNeeds("reference", "frozen", B, 2), dp_size=8)
    assert reference.parts == {"weights": 2 * B}  # frozen weights are not sharded
    assert estimate_memory(RoleNeeds("reward", "cpu", B, 4)).total == 0
    assert estimate_memory(train(B, 4)).describe("CPU slot").startswith("~14.9 GiB per CPU slot")


def test_role_needs_are_checked():
    with pytest.raises(ValueError, match="zero_stage must be 0, 1, 2 or 3"):
        train(B, 2, zero_stage=4)
    with pytest.raises(ValueError, match="kind must be"):
        RoleNeeds("critic", "value", B, 2)  # type: ignore[arg-type]


def test_format_bytes():
    assert format_bytes(16 * B) == "14.9 GiB"
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert format_bytes(2048) == "2.0 KiB"


def test_param_count_of_smollm2_135m():
    # embed 49152 x 576 = 28,311,552; per layer: q and o 2 x 576 x 576 = 663,552, k and v
    # 2 x 576 x 192 = 221,184, MLP 3 x 576 x 1536 = 2,654,208, two norms 1,152 -> 3,540,096;
    # 30 layers = 106,202,880; final norm 576; lm_head tied -> 134,515,008.
    assert estimate_params_from_hf_config(SMOLLM2_135M) == 134_515_008


SHAPE = {
    "vocab_size": 101,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
}


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "extra"),
    [
        (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
        (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": False}),
        (LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": True}),
        (LlamaConfig, LlamaForCausalLM, {"attention_bias": True, "mlp_bias": True}),
        (LlamaConfig, LlamaForCausalLM, {"head_dim": 24}),
        (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
        (MistralConfig, MistralForCausalLM, {}),
    ],
)
def test_param_count_matches_transformers(config_cls, model_cls, extra):
    config = config_cls(**SHAPE, **extra)
    model = model_cls(config)
    exact = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert estimate_params_from_hf_config(config.to_dict()) == exact


def test_param_count_matches_roll_tiny_models():
    tokenizer = build_tokenizer("arithmetic")
    for arch in ("qwen2", "llama"):
        cfg = TinyModelConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
        model = build_tiny_model(cfg, tokenizer)
        exact = sum(p.numel() for p in model.parameters())
        assert estimate_params_from_hf_config(tiny_model_hf_config(cfg, tokenizer).to_dict()) == exact
