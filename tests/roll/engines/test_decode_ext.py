"""The C++ decode loop (roll.engines.decode_ext) computes bitwise what the Python loop does, and a
failed build leaves decoding in Python with the reason kept."""

from __future__ import annotations

import pytest
import torch

from roll.engines import decode_ext
from roll.engines.base import SamplingParams
from roll.engines.hf_engine import HFInferEngine
from roll.models import load_model_and_tokenizer
from roll.models.config import ModelConfig, TinyModelConfig

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")

PROMPTS = [p for p in ([5, 7, 9, 11], [3, 4], [8, 6, 2]) for _ in range(3)]


def engine_for(arch: str, dtype: torch.dtype) -> HFInferEngine:
    cfg = ModelConfig(source="tiny", tiny=TinyModelConfig(arch=arch, vocab="arithmetic"))
    model, tok = load_model_and_tokenizer(cfg)
    engine = HFInferEngine(model.to(dtype), tok)
    engine.lean.pack_min_hidden = 0  # the tiny model's hidden 64 would keep the plain matmuls
    return engine


def generate(engine: HFInferEngine, seed: int = 7):
    torch.manual_seed(seed)
    return engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=1.0))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_decode_loop_is_bitwise_the_python_one(arch, dtype, monkeypatch) -> None:
    monkeypatch.delenv("ROLL_DECODE_EXT", raising=False)
    assert decode_ext.load() is not None, decode_ext.failure()
    engine = engine_for(arch, dtype)
    calls = []
    real = decode_ext.load
    monkeypatch.setattr(decode_ext, "load", lambda: calls.append(1) or real())
    fast = generate(engine)
    assert len(calls) == 9  # every decode step after the prefill went through C++
    engine.lean.use_ext = False
    slow = generate(engine)
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert torch.equal(fast.logprobs, slow.logprobs)
    assert len(calls) == 9


def test_a_failed_build_keeps_decoding_in_python(monkeypatch, caplog) -> None:
    from torch.utils import cpp_extension

    def broken(**kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(decode_ext, "_state", {})
    monkeypatch.setattr(cpp_extension, "load_inline", broken)
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: "/nonexistent/" + name)
    engine = engine_for("qwen2", torch.float32)
    with caplog.at_level("WARNING", logger="roll.engines.decode_ext"):
        out = generate(engine)
    assert decode_ext.failure() == "RuntimeError: no C++ compiler here"
    assert "decoding in Python" in caplog.text and caplog.text.count("no C++ compiler") == 1
    engine.lean.use_ext = False
    expected = generate(engine)
    assert torch.equal(out.response_ids, expected.response_ids)
    assert torch.equal(out.logprobs, expected.logprobs)


def test_roll_decode_ext_0_turns_it_off(monkeypatch) -> None:
    monkeypatch.setenv("ROLL_DECODE_EXT", "0")
    assert not decode_ext.enabled() and decode_ext.load() is None
    monkeypatch.setenv("ROLL_DECODE_EXT", "1")
    assert decode_ext.enabled()
