"""The C++ decode loop (roll.engines.decode_ext) computes what the Python loop computes: float32
to rounding, bf16 at least as close to float32 as the Python loop's op-by-op rounding; and a failed
build leaves decoding in Python with the reason kept."""

from __future__ import annotations

import contextlib

import pytest
import torch

from roll.engines import decode_ext, fast_decode
from roll.engines.base import SamplingParams
from roll.engines.fast_decode import LeanDecoder
from roll.engines.hf_engine import HFInferEngine, left_pad
from roll.engines.logprobs import position_ids_from_mask
from roll.models import load_model_and_tokenizer
from roll.models.config import ModelConfig, TinyModelConfig

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")

PROMPTS = [p for p in ([5, 7, 9, 11], [3, 4], [8, 6, 2]) for _ in range(3)]


def tiny_model(arch: str, **shape) -> tuple[torch.nn.Module, object]:
    cfg = ModelConfig(source="tiny", tiny=TinyModelConfig(arch=arch, vocab="arithmetic", **shape))
    return load_model_and_tokenizer(cfg)


def engine_for(arch: str, dtype: torch.dtype, onednn: bool = True) -> HFInferEngine:
    model, tok = tiny_model(arch)
    engine = HFInferEngine(model.to(dtype), tok)
    if onednn:  # else the tiny model's hidden 64 keeps plain (fused, not reordered) weights
        engine.lean.pack_min_hidden = 0
    assert engine.lean.onednn() == onednn
    return engine


def generate(engine: HFInferEngine, seed: int = 7):
    torch.manual_seed(seed)
    return engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=1.0))


def forced_logits(
    decoder: LeanDecoder, prompts: list[list[int]], steps: int, use_ext: bool, autocast: bool = False
) -> list[torch.Tensor]:
    """Float32 logits of a prefill and ``steps`` teacher-forced decode steps (the same random
    continuation whichever loop runs); after the second step rows 1 and 3 are dropped."""
    decoder.use_ext = use_ext
    vocab = decoder.lm_head.shape[0]
    cont = torch.randint(1, vocab, (len(prompts), steps), generator=torch.Generator().manual_seed(11))
    ids, mask = left_pad(prompts, 0)
    positions = position_ids_from_mask(mask)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    out = []
    with torch.no_grad(), ctx:
        state, logits = decoder.prefill(ids, mask, positions, steps)
        out.append(logits.float())
        pos = positions[:, -1]
        keep = torch.arange(len(prompts))
        for t in range(steps):
            if t == 2:
                keep = torch.tensor([i for i in range(len(prompts)) if i not in (1, 3)])
                state.select(keep)
                pos = pos[keep]
            pos = pos + 1
            out.append(decoder.step(state, cont[keep, t], pos).float())
    decoder.use_ext = True
    return out


@pytest.mark.parametrize("onednn", [True, False])  # weights reordered for oneDNN, or plain
@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # qwen2: q/k/v biases
def test_cpp_loop_matches_the_python_one_in_float32(arch, onednn, monkeypatch) -> None:
    monkeypatch.delenv("ROLL_DECODE_EXT", raising=False)
    assert decode_ext.load() is not None, decode_ext.failure()
    engine = engine_for(arch, torch.float32, onednn)
    calls = []
    real = decode_ext.load
    monkeypatch.setattr(decode_ext, "load", lambda: calls.append(1) or real())
    fast = generate(engine)
    assert len(calls) == 9  # every decode step after the prefill went through C++
    engine.lean.use_ext = False
    slow = generate(engine)
    assert len(calls) == 9
    assert torch.equal(fast.response_ids, slow.response_ids)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)
    ext = forced_logits(engine.lean, PROMPTS, 6, use_ext=True)
    py = forced_logits(engine.lean, PROMPTS, 6, use_ext=False)
    assert engine.lean._onednn == onednn
    assert torch.equal(ext[0], py[0])  # the prefill is the same code
    for a, b in zip(ext[1:], py[1:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "shape",
    [
        {"hidden_size": 256, "num_heads": 4, "num_kv_heads": 2},  # head size 64 (SmolLM2's)
        {"hidden_size": 384, "num_heads": 3, "num_kv_heads": 1},  # 128, three heads a kv head
        {"hidden_size": 64, "num_heads": 2, "num_kv_heads": 1},  # 32
        {"hidden_size": 96, "num_heads": 4, "num_kv_heads": 4},  # 24: the any-size loop, no GQA
    ],
)
def test_cpp_loop_for_each_head_size(shape) -> None:
    """The attention loop is compiled for head sizes 16 (the default tiny model's), 32, 64 and
    128, and runs any other size too."""
    model, _ = tiny_model("llama", intermediate_size=160, **shape)
    decoder = LeanDecoder(model)
    decoder.pack_min_hidden = 0
    assert decode_ext.load() is not None, decode_ext.failure()
    ext = forced_logits(decoder, PROMPTS, 5, use_ext=True)
    py = forced_logits(decoder, PROMPTS, 5, use_ext=False)
    for a, b in zip(ext[1:], py[1:], strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


@pytest.mark.parametrize("case", ["bf16 weights", "autocast"])
def test_cpp_loop_in_bf16_is_as_close_to_float32_as_the_python_one(case) -> None:
    """bf16 weights (float32 attention), or float32 master weights under bf16 autocast (bf16
    packed weights and cache): the C++ loop rounds to bf16 fewer times than the Python loop, so it
    should sit no farther from the float32 model's logits."""
    model, _ = tiny_model("qwen2", num_layers=3)
    reference = LeanDecoder(model)
    reference.pack_min_hidden = 0
    expected = forced_logits(reference, PROMPTS, 6, use_ext=False)  # float32 throughout
    if case == "bf16 weights":
        model = model.to(torch.bfloat16)
    decoder = LeanDecoder(model)
    decoder.pack_min_hidden = 0
    autocast = case == "autocast"
    ext = forced_logits(decoder, PROMPTS, 6, use_ext=True, autocast=autocast)
    py = forced_logits(decoder, PROMPTS, 6, use_ext=False, autocast=autocast)
    scale = max(e.abs().max() for e in expected)
    worst = max((a - e).abs().max() for a, e in zip(ext[1:], expected[1:], strict=True))
    assert 0 < worst <= 0.02 * scale  # bf16: ~3 significant digits

    def mean_error(got: list[torch.Tensor]) -> float:  # the largest error is the bf16 logits'
        pairs = zip(got[1:], expected[1:], strict=True)
        return float(torch.stack([(a - e).abs().mean() for a, e in pairs]).mean())

    assert mean_error(ext) <= 1.1 * mean_error(py), (mean_error(ext), mean_error(py))


def test_bad_shapes_get_a_clear_error() -> None:
    ext = decode_ext.load()
    assert ext is not None, decode_ext.failure()
    model, _ = tiny_model("llama")
    decoder = LeanDecoder(model)
    decoder.pack(2)
    b, kv, d = 2, decoder.kv_heads, decoder.head_dim
    cache = [torch.zeros(b, kv, 8, d) for _ in decoder.layers]
    h, cos = torch.zeros(b, model.config.hidden_size), torch.zeros(b, 1, d)
    with pytest.raises(RuntimeError, match=r"mask \[B, 1, 1, col \+ 1\]"):
        ext.decode_layers(
            h, 3, cos, cos, torch.zeros(b, 1, 1, 2), decoder.heads, kv, d, 1.0, True,
            *decoder._ext_args, cache, cache,
        )  # fmt: skip
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ext.decode_layers(
            h.double(), 3, cos, cos, torch.zeros(b, 1, 1, 4), decoder.heads, kv, d, 1.0, True,
            *decoder._ext_args, cache, cache,
        )  # fmt: skip


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


def amx_ext():
    ext = decode_ext.load()
    assert ext is not None, decode_ext.failure()
    if not ext.amx_available():
        pytest.skip("this CPU (or its kernel) gives no AMX tiles; oneDNN's bf16 path is tested above")
    return ext


@pytest.mark.parametrize("rows", [1, 8, 16, 32, 40])
@pytest.mark.parametrize("n,k", [(3072, 576), (576, 1536), (111, 64), (48, 80)])
def test_amx_linear_is_onednns_bf16_linear_bitwise(rows, n, k) -> None:
    """linear_amx over pack_amx(W) gives what oneDNN's bf16 linear gives: bit for bit at decode
    row counts (same 32-wide k steps, float32 sums, one rounding), to bf16 rounding for a
    prefill-sized batch (several 16-row chunks, the last partial); widths that are not whole
    tiles (padded), with and without a bias, from bf16 or float32 input."""
    ext = amx_ext()
    gen = torch.Generator().manual_seed(rows * n + k)
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
    packed = ext.pack_amx(w)
    for bias in (torch.randn(n, generator=gen).to(torch.bfloat16), None):
        got = ext.linear_amx(x, packed, bias, n)
        assert got.shape == (rows, n) and got.dtype == torch.bfloat16
        onednn = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        want = torch.ops.mkldnn._linear_pointwise(x, onednn, bias, "none", [], "")
        if rows <= 16:  # one row tile: oneDNN's k order; prefill-sized batches block k otherwise
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-2)
        exact = x.float() @ w.float().T + (0 if bias is None else bias.float())
        torch.testing.assert_close(got.float(), exact, rtol=2**-7, atol=1e-2)
        assert torch.equal(ext.linear_amx(x.float(), packed, bias, n), got)  # autocast's input
    with pytest.raises(RuntimeError, match="features"):
        ext.linear_amx(torch.zeros(2, k + 32, dtype=torch.bfloat16), packed, None, n)


def test_bf16_decoder_runs_on_amx_tiles_with_onednns_results() -> None:
    """A bf16 model (and float32 master weights under bf16 autocast) decodes on AMX tiles where
    the CPU has them: the same logits, bit for bit, as on oneDNN-reordered weights."""
    amx_ext()
    model, _ = tiny_model("qwen2", num_layers=3)  # vocabulary 111: lm_head padded to 112
    for dtype, autocast in ((torch.bfloat16, False), (torch.float32, True)):
        decoder = LeanDecoder(model.to(dtype))
        decoder.pack_min_hidden = 0
        tiles = forced_logits(decoder, PROMPTS, 6, use_ext=True, autocast=autocast)
        assert decoder._mode == fast_decode.AMX
        decoder.use_amx = False
        reordered = forced_logits(decoder, PROMPTS, 6, use_ext=True, autocast=autocast)
        assert decoder._mode == fast_decode.ONEDNN
        for a, b in zip(tiles, reordered, strict=True):
            assert torch.equal(a, b)
    decoder.use_amx = True  # float32 weights without autocast stay on oneDNN (AMX is bf16 only)
    forced_logits(decoder, PROMPTS, 2, use_ext=True)
    assert decoder._mode == fast_decode.ONEDNN
