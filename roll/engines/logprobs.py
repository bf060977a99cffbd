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

    Two savings, neither of which changes the math (tests/roll/engines/test_logprobs.py):
    - response columns after the longest response (all padding) are not computed (zeros);
    - rows that share a prompt (a GRPO group) run it once: the unique prompts go through the
      model first, their KV cache is expanded to every row, and only the responses are run on top
      of it. Gradients of the shared prompt sum over the rows, as in separate forwards.
    """
    prompt_len = input_ids.shape[1] - response_len
    used = _used_columns(attention_mask[:, prompt_len:])
    ids, mask = input_ids[:, : prompt_len + used], attention_mask[:, : prompt_len + used]
    keys = torch.cat([ids[:, :prompt_len], mask[:, :prompt_len]], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if prompt_len > 0 and len(unique) < len(keys):
        logits = _shared_prompt_logits(
            model, unique[:, :prompt_len], unique[:, prompt_len:], inverse, ids, mask
        )
    else:
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            logits_to_keep=used + 1,
            use_cache=False,
        ).logits[:, :-1]
    labels = ids[:, prompt_len:]
    logprobs = _pad_columns(token_logprobs(logits, labels, temperature), response_len)
    if not with_entropy:
        return logprobs
    scaled = logits if temperature == 1.0 else logits.float() / temperature
    return logprobs, _pad_columns(entropy_from_logits(scaled), response_len)


def _shared_prompt_logits(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    inverse: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """[B, R, V] logits predicting each row's R response tokens, running each of the U unique
    prompts ([U, P]) once; ``inverse`` [B] maps rows to their prompt. The last response token is
    never an input (nothing after it is scored)."""
    prompt_len = prompt_ids.shape[1]
    prompt_out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        logits_to_keep=1,
        use_cache=True,
    )
    first = prompt_out.logits[inverse]  # [B, 1, V]: predicts each row's first response token
    if ids.shape[1] - prompt_len == 1:
        return first
    cache = prompt_out.cache
    cache.reorder_cache(inverse)  # index_select per layer: differentiable, grads sum per prompt
    response_out = model(
        input_ids=ids[:, prompt_len:-1],
        attention_mask=mask[:, :-1],
        position_ids=position_ids_from_mask(mask)[:, prompt_len:-1],
        cache=cache,
        use_cache=True,
    )
    return torch.cat([first, response_out.logits], dim=1)


def _used_columns(response_attention: torch.Tensor) -> int:
    """1 + the last response column any row attends to (at least 1): the rest is padding."""
    columns = response_attention.any(0).nonzero()
    return int(columns.max()) + 1 if len(columns) else 1


def _pad_columns(values: torch.Tensor, width: int) -> torch.Tensor:
    """[B, r] -> [B, width] with zeros on the right (columns past the longest response)."""
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))
