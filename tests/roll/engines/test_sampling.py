"""Inverse-CDF sampling draws from the filtered softmax; the decode loop drops finished rows
without changing what any row generates."""

from __future__ import annotations

import math

import pytest
import torch

from roll.engines.base import SamplingParams
from roll.engines.hf_engine import HFInferEngine
from roll.engines.logprobs import response_logprobs
from roll.engines.sampling import filter_logits, sample_next
from roll.models import build_tiny_model, build_tokenizer
from roll.models.config import TinyModelConfig

NEG = float("-inf")


def test_top_k_keeps_the_k_largest() -> None:
    scaled = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, 0.1, 0.2, 0.9]])
    out = filter_logits(scaled, top_k=2)
    expected = torch.tensor([[NEG, 3.0, 2.0, NEG], [0.5, NEG, NEG, 0.9]])
    assert torch.equal(out, expected)


def test_top_p_keeps_the_smallest_nucleus() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05 (logits = log p)
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    scaled = probs.log()
    # 0.5 < 0.7: the top two (0.8) are needed; 0.8 >= 0.7 stops there
    assert torch.isinf(filter_logits(scaled, top_p=0.7)).tolist() == [[True, False, True, False]]
    # 0.5 + 0.3 + 0.15 = 0.95 >= 0.9: three tokens
    assert torch.isinf(filter_logits(scaled, top_p=0.9)).tolist() == [[False, False, True, False]]
    # the most likely token is always kept
    assert torch.isinf(filter_logits(scaled, top_p=0.01)).tolist() == [[True, False, True, True]]


def test_draw_frequencies_follow_the_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0, NEG]]).repeat(20000, 1)
    draws = sample_next(logits, temperature=0.5)
    expected = torch.softmax(logits[0] / 0.5, -1)
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    # 4 sigma of a binomial proportion with n = 20000
    tol = 4 * torch.sqrt(expected * (1 - expected) / len(draws)) + 1e-9
    assert ((freq - expected).abs() <= tol).all(), (freq, expected)
    assert freq[4] == 0  # -inf is never drawn


def test_zero_probability_tokens_are_never_drawn_and_greedy_is_argmax() -> None:
    torch.manual_seed(1)
    logits = torch.full((5000, 6), NEG)
    logits[:, 3] = 0.0  # only token 3 is possible, even where u would land on a flat CDF step
    assert (sample_next(logits, 1.0) == 3).all()
    scores = torch.randn(7, 11)
    assert torch.equal(sample_next(scores, 0.0), scores.argmax(-1))
    top1 = sample_next(scores, 1.0, top_k=1)
    assert torch.equal(top1, scores.argmax(-1))


@pytest.fixture(scope="module")
def engine() -> HFInferEngine:
    tok = build_tokenizer("digits")
    model = build_tiny_model(TinyModelConfig(vocab="digits"), tok)
    # larger random weights than the init, so greedy continuations vary instead of repeating
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return HFInferEngine(model, tok)


def test_rows_that_finish_early_leave_the_batch_without_changing_the_others(engine) -> None:
    tok = engine.tokenizer
    texts = ("3 + 4 =", "1 + 1 =", "9 = 9 + 0 =", "2 =", "5 + 5", "7")
    prompts = [tok(p)["input_ids"] for p in texts]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, stop=("8",))
    together = engine.generate(prompts, greedy)
    lengths = together.response_mask.sum(-1).tolist()
    assert len(set(lengths)) >= 3, f"the case needs rows that end at different steps: {lengths}"
    for i, prompt in enumerate(prompts):
        alone = engine.generate([prompt], greedy)
        n = lengths[i]
        assert int(alone.response_mask.sum()) == n
        assert alone.response_ids[0, :n].tolist() == together.response_ids[i, :n].tolist()
        torch.testing.assert_close(alone.logprobs[0, :n], together.logprobs[i, :n], atol=1e-5, rtol=0)


def test_sampled_logprobs_match_a_teacher_forced_forward(engine) -> None:
    tok = engine.tokenizer
    prompts = [tok("3 + 4 =")["input_ids"]] * 6 + [tok("1 + 2 =")["input_ids"][-3:]] * 6
    torch.manual_seed(3)
    out = engine.generate(prompts, SamplingParams(max_new_tokens=7, temperature=0.7, top_k=5))
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width + out.response_ids.shape[1]), engine.pad_id)
    att = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) : width] = torch.tensor(p)
        att[i, width - len(p) : width] = 1
    ids[:, width:] = out.response_ids
    att[:, width:] = out.response_mask.long()
    with torch.no_grad():
        forced = response_logprobs(engine.model, ids, att, out.response_ids.shape[1], temperature=0.7)
    mask = out.response_mask
    assert float(((forced - out.logprobs).abs() * mask).max()) < 1e-5
    # log-probs are of the unfiltered policy: a top-5 draw still has log p < 0 and > -inf
    assert math.isfinite(float(out.logprobs[mask].min())) and float(out.logprobs[mask].max()) < 0
