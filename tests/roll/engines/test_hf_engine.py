"""HF generate engine: EOS and stop strings end responses; masks, padding and log-probs follow."""

from __future__ import annotations

import torch

from roll.engines.base import SamplingParams
from roll.engines.hf_engine import HFInferEngine, left_pad, response_lengths
from roll.engines.logprobs import token_logprobs
from roll.models import build_tiny_model, build_tokenizer
from roll.models.config import TinyModelConfig


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_response_lengths_eos_and_stop_strings() -> None:
    tok = build_tokenizer("digits")
    eos = tok.eos_token_id
    rows = torch.tensor(
        [
            tok.convert_tokens_to_ids(["1", "2", "3", "4"]),
            tok.convert_tokens_to_ids(["5", "="]) + [eos, 0],
            tok.convert_tokens_to_ids(["6", "+", "7", "8"]),
        ]
    )
    lengths, reasons = response_lengths(rows, {eos}, ("+",), tok)
    assert lengths == [4, 3, 2] and reasons == ["length", "stop", "stop"]


def test_token_logprobs_equals_log_softmax() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 7, 11), torch.randint(0, 11, (5, 7))
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(token_logprobs(logits, labels, 0.7), expected, atol=1e-6, rtol=0)


def test_generate_with_stop_string_masks_the_tail() -> None:
    tok = build_tokenizer("digits")
    engine = HFInferEngine(build_tiny_model(TinyModelConfig(vocab="digits"), tok), tok)
    prompts = [tok("3 + 4 =")["input_ids"], tok("1 + 1 =")["input_ids"][-2:]]
    torch.manual_seed(0)
    out = engine.generate(prompts * 8, SamplingParams(max_new_tokens=6, temperature=1.0, stop=("=",)))
    assert out.response_ids.shape[0] == 16
    rows = zip(out.response_ids, out.response_mask, out.finish_reasons, out.logprobs, strict=True)
    for row, mask, reason, lp in rows:
        n = int(mask.sum())
        text = tok.decode(row[:n].tolist(), skip_special_tokens=True)
        assert mask[:n].all() and not mask[n:].any()
        assert (row[n:] == engine.pad_id).all() and (lp[n:] == 0).all() and (lp[:n] <= 0).all()
        if reason == "stop" and "=" in text:
            assert text.endswith("=") and text.count("=") == 1
        assert reason == "stop" or n == 6
    assert any("=" in tok.decode(r.tolist()) for r in out.response_ids)  # the stop case happened
