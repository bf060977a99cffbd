"""The lean decode path reproduces the HF forward (logits, sampled tokens, log-probs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from roll.engines.base import SamplingParams
from roll.engines.fast_decode import LeanDecoder, unsupported_reason
from roll.engines.hf_engine import HFInferEngine, left_pad
from roll.engines.logprobs import position_ids_from_mask
from roll.engines.weights import load_numpy_state, tensors_to_numpy
from roll.models import load_model_and_tokenizer
from roll.models.config import ModelConfig, TinyModelConfig


def tiny(arch: str, **shape):
    cfg = ModelConfig(source="tiny", tiny=TinyModelConfig(arch=arch, vocab="arithmetic", **shape))
    return load_model_and_tokenizer(cfg)


PROMPTS = [[5, 7, 9, 11], [3, 4], [8, 6, 2], [3, 4]]  # uneven lengths (left padding), a repeat


def full_forward_logits(model, prompt_ids, continuation):
    """[B, C+1, V] logits of a plain teacher-forced HF forward at the last prompt position and
    at every continuation token."""
    ids, mask = left_pad(prompt_ids, 0)
    full = torch.cat([ids, continuation], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(continuation)], dim=1)
    with torch.no_grad():
        out = model(input_ids=full, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask))
    return out.logits[:, ids.shape[1] - 1 :].float()


@pytest.mark.parametrize(
    "arch, shape",
    [
        ("qwen2", {}),  # q/k/v biases, grouped-query attention (4 heads, 2 kv heads)
        ("llama", {"num_heads": 4, "num_kv_heads": 4}),
        ("llama", {"num_heads": 8, "num_kv_heads": 2, "num_layers": 3}),
    ],
)
def test_prefill_and_steps_match_the_hf_forward(arch, shape) -> None:
    model, _ = tiny(arch, **shape)
    decoder = LeanDecoder.build(model)
    assert decoder is not None
    torch.manual_seed(1)
    cont = torch.randint(1, model.config.vocab_size, (len(PROMPTS), 5))
    ref = full_forward_logits(model, PROMPTS, cont)
    ids, mask = left_pad(PROMPTS, 0)
    positions = position_ids_from_mask(mask)
    with torch.no_grad():
        state, logits = decoder.prefill(ids, mask, positions, max_new_tokens=5)
        got = [logits]
        pos = positions[:, -1]
        for t in range(4):
            pos = pos + 1
            got.append(decoder.step(state, cont[:, t], pos))
    got = torch.stack(got, dim=1)
    assert got.shape == ref[:, :5].shape
    torch.testing.assert_close(got, ref[:, :5], atol=1e-5, rtol=0)


def test_selecting_rows_keeps_their_cache() -> None:
    """Rows that finish leave the cache; the remaining rows decode exactly as before."""
    model, _ = tiny("qwen2")
    decoder = LeanDecoder(model)
    gen = torch.Generator().manual_seed(2)
    cont = torch.randint(1, model.config.vocab_size, (len(PROMPTS), 4), generator=gen)
    ref = full_forward_logits(model, PROMPTS, cont)
    ids, mask = left_pad(PROMPTS, 0)
    positions = position_ids_from_mask(mask)
    keep = torch.tensor([0, 2])
    with torch.no_grad():
        state, _ = decoder.prefill(ids, mask, positions, max_new_tokens=4)
        pos = positions[:, -1] + 1
        decoder.step(state, cont[:, 0], pos)
        state.select(keep)
        logits = decoder.step(state, cont[keep, 1], pos[keep] + 1)
    torch.testing.assert_close(logits, ref[keep, 2], atol=1e-5, rtol=0)


def test_engine_samples_the_same_tokens_as_the_hf_forward_loop() -> None:
    model, tok = tiny("qwen2")
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    prompts = [p for p in PROMPTS for _ in range(4)]
    outs = []
    for lean in (False, True):
        engine = HFInferEngine(model, tok, lean=lean)
        assert (engine.lean is not None) == lean
        torch.manual_seed(7)
        outs.append(engine.generate(prompts, params))
    hf, fast = outs
    assert torch.equal(hf.response_ids, fast.response_ids)
    assert torch.equal(hf.response_mask, fast.response_mask)
    assert hf.finish_reasons == fast.finish_reasons
    assert 0 < int(hf.response_mask.sum()) < hf.response_mask.numel()  # some rows stopped early
    torch.testing.assert_close(fast.logprobs, hf.logprobs, atol=1e-5, rtol=0)


def test_weights_updated_in_place_are_used() -> None:
    """The decoder holds the model's parameters, not copies: a weight sync is seen at once."""
    model, tok = tiny("llama")
    other, _ = load_model_and_tokenizer(
        ModelConfig(source="tiny", tiny=TinyModelConfig(arch="llama", vocab="arithmetic", seed=5))
    )
    engine = HFInferEngine(model, tok)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = engine.generate(PROMPTS, params).logprobs
    load_numpy_state(model, tensors_to_numpy(other.state_dict()))
    after = engine.generate(PROMPTS, params)
    expected = HFInferEngine(other, tok, lean=False).generate(PROMPTS, params)
    assert not torch.allclose(before, after.logprobs)
    assert torch.equal(after.response_ids, expected.response_ids)
    np.testing.assert_allclose(after.logprobs.numpy(), expected.logprobs.numpy(), atol=1e-5)


def test_unsupported_models_keep_the_hf_forward() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert "model_type 'gpt2'" in unsupported_reason(gpt2)
    model, _ = tiny("qwen2")
    assert unsupported_reason(model) is None
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert "LoRA" in unsupported_reason(lora.base_model.model)
    assert LeanDecoder.build(lora.base_model.model) is None


def test_bf16_packed_weights_decode_exactly_like_plain_ones(monkeypatch) -> None:
    """bf16 on CPU: decode steps run on oneDNN-packed weights (bitwise the plain matmul's result)
    with float32 attention; the logits stay within bf16 rounding of the HF bf16 forward."""
    model, tok = tiny("llama", num_heads=4, num_kv_heads=2)
    model = model.to(torch.bfloat16)
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    prompts = [p for p in PROMPTS for _ in range(3)]
    engine = HFInferEngine(model, tok)
    engine.lean.use_ext = False  # the Python loop (test_decode_ext.py checks the C++ one against it)
    assert not engine.lean.onednn()  # hidden 64: below pack_min_hidden, plain matmuls win
    engine.lean.pack_min_hidden = 0
    assert engine.lean.onednn() == torch.backends.mkldnn.is_available()
    torch.manual_seed(3)
    packed = engine.generate(prompts, params)
    monkeypatch.setattr(LeanDecoder, "can_pack", lambda self: False)
    engine.lean.unpack()
    torch.manual_seed(3)
    plain = engine.generate(prompts, params)
    assert torch.equal(packed.response_ids, plain.response_ids)
    assert torch.equal(packed.logprobs, plain.logprobs)
    gen = torch.Generator().manual_seed(4)
    cont = torch.randint(1, model.config.vocab_size, (len(PROMPTS), 4), generator=gen)
    ref = full_forward_logits(model, PROMPTS, cont)
    monkeypatch.undo()
    ids, mask = left_pad(PROMPTS, 0)
    positions = position_ids_from_mask(mask)
    with torch.no_grad():
        state, logits = engine.lean.prefill(ids, mask, positions, 4)
        got = [logits.float()]
        pos = positions[:, -1]
        for t in range(3):
            pos = pos + 1
            got.append(engine.lean.step(state, cont[:, t], pos).float())
    scale = ref[:, :4].abs().max()
    assert (torch.stack(got, 1) - ref[:, :4]).abs().max() <= 0.02 * scale  # bf16: ~3 significant digits


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # qwen2: the fused q/k/v projection has biases
def test_float32_packed_fused_weights_match_plain_ones(arch, monkeypatch) -> None:
    """float32 on CPU: prefill and decode run on oneDNN-packed copies with q/k/v and gate/up
    fused (the same to float rounding as the plain matmuls); the copies are dropped after each
    generate and made again from the current weights at the next one."""
    model, tok = tiny(arch)
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    prompts = [p for p in PROMPTS for _ in range(3)]
    engine = HFInferEngine(model, tok)
    assert not engine.lean.onednn()  # hidden 64: below pack_min_hidden, plain matmuls win
    engine.lean.pack_min_hidden = 0
    assert engine.lean.onednn()
    seen: list[set[str]] = []
    real_step = LeanDecoder.step

    def spy(self, state, tokens, positions):
        seen.append(set(self.layers[0].packed))
        return real_step(self, state, tokens, positions)

    monkeypatch.setattr(LeanDecoder, "step", spy)
    torch.manual_seed(3)
    packed = engine.generate(prompts, params)
    assert seen and all(keys == {"qkv", "o", "gate_up", "down"} for keys in seen)
    assert engine.lean.layers[0].packed == {} and engine.lean._head_packed is None
    monkeypatch.setattr(LeanDecoder, "can_pack", lambda self: False)
    torch.manual_seed(3)
    plain = engine.generate(prompts, params)
    assert torch.equal(packed.response_ids, plain.response_ids)
    torch.testing.assert_close(packed.logprobs, plain.logprobs, atol=1e-5, rtol=0)
    # weights changed in place between two generates: the next one packs the new weights
    monkeypatch.undo()
    with torch.no_grad():
        for p in model.parameters():
            p.data.mul_(1.5)  # through .data: no version bump, so no version check would see it
    torch.manual_seed(3)
    after = engine.generate(prompts, params)
    monkeypatch.setattr(LeanDecoder, "can_pack", lambda self: False)
    torch.manual_seed(3)
    expected = engine.generate(prompts, params)
    assert torch.equal(after.response_ids, expected.response_ids)
    torch.testing.assert_close(after.logprobs, expected.logprobs, atol=1e-5, rtol=0)
    assert (after.logprobs - packed.logprobs).abs().max() > 1e-3


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_under_autocast_weights_are_packed_in_bf16_and_decode_like_autocast(monkeypatch) -> None:
    """float32 master weights under CPU bf16 autocast (a fused actor + rollout): the packed copies
    are bf16, so decode computes what autocast's F.linear computes (bitwise), not float32."""
    model, tok = tiny("qwen2")  # with q/k/v biases
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    prompts = [p for p in PROMPTS for _ in range(2)]
    engine = HFInferEngine(model, tok)
    engine.lean.use_ext = False  # the Python loop (test_decode_ext.py checks the C++ one against it)
    assert not engine.lean.onednn()  # hidden 64: below pack_min_hidden, plain matmuls win
    engine.lean.pack_min_hidden = 0
    dtypes: list[torch.dtype] = []
    real_step = LeanDecoder.step

    def spy(self, state, tokens, positions):
        dtypes.append(self._head_packed.dtype)
        return real_step(self, state, tokens, positions)

    monkeypatch.setattr(LeanDecoder, "step", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        packed = engine.generate(prompts, params)
        monkeypatch.setattr(LeanDecoder, "step", real_step)
        monkeypatch.setattr(LeanDecoder, "can_pack", lambda self: False)
        torch.manual_seed(5)
        plain = engine.generate(prompts, params)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert torch.equal(packed.response_ids, plain.response_ids)
    assert torch.equal(packed.logprobs, plain.logprobs)
    monkeypatch.undo()
    torch.manual_seed(5)
    full = engine.generate(prompts, params)  # no autocast: float32 throughout
    assert (full.logprobs - packed.logprobs).abs().max() > 1e-4
