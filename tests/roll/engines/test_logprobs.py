"""response_logprobs: the shared-prompt and trimmed-padding paths equal a plain full forward."""

from __future__ import annotations

import pytest
import torch

from roll.algos.entropy import entropy_from_logits
from roll.engines.logprobs import position_ids_from_mask, response_logprobs
from roll.models import build_tiny_model, build_tokenizer
from roll.models.config import TinyModelConfig

PROMPT, RESPONSE = 6, 5


def grouped_batch(vocab: int, group: int, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 prompts (left-padded, lengths 6, 4, 2) x ``group`` rows, responses of 1..``longest``
    tokens right-padded to RESPONSE columns."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.zeros(3 * group, PROMPT + RESPONSE, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for p, length in enumerate([6, 4, 2]):
        prompt = torch.randint(3, vocab, (length,), generator=gen)
        for k in range(group):
            row = p * group + k
            ids[row, PROMPT - length : PROMPT] = prompt
            mask[row, PROMPT - length : PROMPT] = 1
            n = 1 + (row % longest)
            ids[row, PROMPT : PROMPT + n] = torch.randint(3, vocab, (n,), generator=gen)
            mask[row, PROMPT : PROMPT + n] = 1
    return ids, mask


def full_forward(model, ids, mask, temperature):
    """The plain definition: one forward over every row and column, full log-softmax."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logits = logits[:, PROMPT - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, PROMPT:, None])[..., 0]
    return logp, entropy_from_logits(logits)


@pytest.mark.parametrize("group,longest", [(4, RESPONSE), (1, RESPONSE), (4, 3), (4, 1)])
def test_matches_full_forward_with_gradients(group: int, longest: int) -> None:
    tok = build_tokenizer("digits")
    model = build_tiny_model(TinyModelConfig(vocab="digits"), tok).train()
    ids, mask = grouped_batch(len(tok), group, longest)
    resp_mask = mask[:, PROMPT:].float()

    def loss_and_grads(fn):
        model.zero_grad()
        logp, ent = fn()
        ((logp + 0.1 * ent) * resp_mask).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        return logp.detach() * resp_mask, ent.detach() * resp_mask, grads

    got = loss_and_grads(lambda: response_logprobs(model, ids, mask, RESPONSE, 0.7, with_entropy=True))
    want = loss_and_grads(lambda: full_forward(model, ids, mask, 0.7))
    torch.testing.assert_close(got[0], want[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=2e-5, rtol=0)
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)
    logp_only = response_logprobs(model, ids, mask, RESPONSE, 0.7)
    assert logp_only.shape == (len(ids), RESPONSE)
    assert (logp_only[:, longest:] == 0).all()  # columns past the longest response are not computed


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_elements", [11 * 3, 1 << 22])  # 3 rows a chunk, or all rows at once
def test_fused_logprob_entropy_values_and_gradients(temperature, chunk_elements, monkeypatch) -> None:
    import roll.engines.logprobs as lp

    monkeypatch.setattr(lp, "CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 11, generator=gen, dtype=torch.float64).float().requires_grad_()
    labels = torch.randint(0, 11, (4, 5), generator=gen)
    g_lp, g_ent = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)

    logp, ent = lp.token_logprobs_and_entropy(logits, labels, temperature)
    (logp * g_lp + ent * g_ent).sum().backward()
    fused_grad, logits.grad = logits.grad.clone(), None

    z = logits / temperature
    ref_lp = torch.log_softmax(z, -1).gather(-1, labels[..., None])[..., 0]
    ref_ent = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
    (ref_lp * g_lp + ref_ent * g_ent).sum().backward()
    torch.testing.assert_close(logp, ref_lp, atol=5e-6, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=5e-6, rtol=0)
    torch.testing.assert_close(fused_grad, logits.grad, atol=5e-6, rtol=0)

    # only the log-probs in the loss (entropy reported, as with entropy_coef 0)
    logits.grad = None
    logp, _ = lp.token_logprobs_and_entropy(logits, labels, temperature)
    (logp * g_lp).sum().backward()
    only_lp, logits.grad = logits.grad.clone(), None
    (
        torch.log_softmax(logits / temperature, -1).gather(-1, labels[..., None])[..., 0] * g_lp
    ).sum().backward()
    torch.testing.assert_close(only_lp, logits.grad, atol=5e-6, rtol=0)


def test_length_buckets_minimise_padding_plus_overhead() -> None:
    import itertools
    import random

    from roll.engines.logprobs import length_buckets

    def cost(lengths, runs, overhead):
        return sum((b - a) * lengths[a] + overhead for a, b in runs)

    # two long rows and two short ones: 2 runs cost 20 + 2 + 2 * 1 = 24 (one run: 40 + 1)
    assert length_buckets([10, 10, 1, 1], max_buckets=4, overhead=1) == [(0, 2), (2, 4)]
    # a run's fixed cost of 30 makes one run (40 + 30) cheaper than two (22 + 60)
    assert length_buckets([10, 10, 1, 1], max_buckets=4, overhead=30) == [(0, 4)]
    assert length_buckets([5], max_buckets=4) == [(0, 1)] and length_buckets([], 4) == []
    rng = random.Random(0)
    for _ in range(80):  # optimal among every contiguous partition into <= 3 runs
        top = rng.choice([3, 32])  # few distinct lengths (many ties) or mostly distinct ones
        lengths = sorted((rng.randint(1, top) for _ in range(rng.randint(1, 9))), reverse=True)
        n, overhead = len(lengths), rng.choice([0, 5, 40])
        runs = length_buckets(lengths, max_buckets=3, overhead=overhead)
        assert runs[0][0] == 0 and runs[-1][1] == n and len(runs) <= 3
        assert all(a[1] == b[0] for a, b in zip(runs, runs[1:], strict=False))
        best = min(
            cost(lengths, list(zip((0, *cuts), (*cuts, n), strict=True)), overhead)
            for k in range(3)
            for cuts in itertools.combinations(range(1, n), k)
        )
        assert cost(lengths, runs, overhead) == best


def test_bf16_training_pass_on_math_attention_matches_float32(monkeypatch) -> None:
    """A bf16 training pass on CPU runs attention on the math kernel (the flash backward is the
    slow one in bf16): left-padded prompts (query rows with no valid key) stay finite, and the
    log-probs and gradients match the float32 full forward to bf16 rounding."""
    from roll.engines import logprobs as lp_mod

    tok = build_tokenizer("digits")
    model = build_tiny_model(TinyModelConfig(vocab="digits"), tok).train()
    ids, mask = grouped_batch(len(tok), 4, RESPONSE)
    resp_mask = mask[:, PROMPT:].float()
    chosen = []
    real = lp_mod._attention_backend

    def run(fn, autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logp = fn()
        (logp * resp_mask).sum().backward()
        return logp.detach() * resp_mask, [p.grad.clone() for p in model.parameters()]

    with monkeypatch.context() as patch:
        patch.setattr(lp_mod, "_attention_backend", lambda bf16: chosen.append(real(bf16)) or chosen[-1])
        got = run(lambda: response_logprobs(model, ids, mask, RESPONSE, 1.0), autocast=True)
    assert chosen and type(chosen[0]).__name__ != "nullcontext"  # the math kernel was asked for
    want = run(lambda: full_forward(model, ids, mask, 1.0)[0], autocast=False)
    assert torch.isfinite(got[0]).all() and all(torch.isfinite(g).all() for g in got[1])
    torch.testing.assert_close(got[0], want[0], atol=0.05, rtol=0.02)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, atol=0.05, rtol=0.05)
    # forward-only passes and float32 keep the default kernels
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert lp_mod._bf16_on_cpu(model) and type(real(True)).__name__ == "nullcontext"
    assert not lp_mod._bf16_on_cpu(model) and type(real(False)).__name__ == "nullcontext"
    assert lp_mod._bf16_on_cpu(model.to(torch.bfloat16))
