"""Per-token log-probs from a causal LM without materialising a full log-softmax.

log p(y_t) = logit[y_t] - logsumexp(logits): one gather and one logsumexp per position, computed in
row chunks so the [B, T, V] float32 log-softmax tensor never exists (the vocabulary of a real model
is 49k-150k tokens).
"""

from __future__ import annotations

import torch

from roll.algos.entropy import entropy_from_logits


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_rows: int = 16
) -> torch.Tensor:
    """Log-probs of ``labels`` under ``softmax(logits / temperature)``.

    logits: [B, T, V] (any float dtype; computed in float32); labels: [B, T] int64 → [B, T] float32.
    """
    out = []
    for start in range(0, logits.shape[0], chunk_rows):
        part = logits[start : start + chunk_rows].float()
        if temperature != 1.0:
            part = part / temperature
        picked = torch.gather(part, -1, labels[start : start + chunk_rows, :, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(part, dim=-1))
    return torch.cat(out, dim=0)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each row's first real token (as HF generate does)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log-probs of the last ``response_len`` tokens of each row.

    input_ids, attention_mask: [B, P + R] with prompts left-padded and responses right-padded.
    Returns [B, R] float32 (values at padded response positions are meaningless; mask them), and
    with ``with_entropy`` also the [B, R] entropy of the policy at each position.
    Only the last R + 1 positions go through the LM head (``logits_to_keep``).
    """
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=response_len + 1,
        use_cache=False,
    )
    logits = outputs.logits[:, :-1]
    labels = input_ids[:, -response_len:]
    logprobs = token_logprobs(logits, labels, temperature)
    if not with_entropy:
        return logprobs
    scaled = logits if temperature == 1.0 else logits.float() / temperature
    return logprobs, entropy_from_logits(scaled)
