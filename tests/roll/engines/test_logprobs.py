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
