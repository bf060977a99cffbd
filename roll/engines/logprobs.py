"""Per-token log-probs (and entropy) from a causal LM without materialising a full log-softmax.

log p(y_t) = z[y_t] - logsumexp(z) and H_t = logsumexp(z) - sum_k p_k z_k for z = logits / T,
computed in chunks of token rows small enough to stay in cache, forward and backward, by one
autograd function: nothing of size [B, T, V] is allocated besides the logits and their gradient
(the vocabulary of a real model is 49k-150k tokens). Gradients, with p = softmax(z):
d logp / dz_k = [k = y] - p_k and dH / dz_k = -p_k (z_k - sum_j p_j z_j), each divided by T for
the logits. Measured on SmolLM2-135M (32 x 32 scored tokens, fp32, 2 cores): see bench/RESULTS.md.
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache

CHUNK_ELEMENTS = 1 << 22  # float32 values per chunk (16 MB): chunk rows = this // vocabulary


class _LogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: torch.Tensor, labels: torch.Tensor, temperature: float, entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1, 1)
        rows = flat.shape[0]
        logp = torch.empty(rows, dtype=torch.float32, device=flat.device)
        lse_all = torch.empty_like(logp)
        ent = torch.empty_like(logp) if entropy else logp.new_empty(0)
        for start, stop in _chunks(rows, flat.shape[1]):
            z = _scaled(flat[start:stop], temperature)
            lse = torch.logsumexp(z, dim=-1)
            logp[start:stop] = z.gather(-1, lab[start:stop]).squeeze(-1) - lse
            lse_all[start:stop] = lse
            if entropy:
                ent[start:stop] = lse - (torch.exp(z - lse[:, None]) * z).sum(-1)
        ctx.save_for_backward(logits, labels, lse_all)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        shape = labels.shape
        return logp.view(shape), ent.view(shape) if entropy else ent

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g_logp: torch.Tensor | None, g_ent: torch.Tensor | None):
        logits, labels, lse_all = ctx.saved_tensors
        flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1, 1)
        grad = torch.empty_like(flat)
        g_logp = g_logp.reshape(-1, 1).float() if g_logp is not None else None
        g_ent = g_ent.reshape(-1, 1).float() if g_ent is not None and g_ent.numel() else None
        t = ctx.temperature
        for start, stop in _chunks(flat.shape[0], flat.shape[1]):
            z = _scaled(flat[start:stop], t)
            p = torch.exp(z - lse_all[start:stop, None])
            if g_logp is not None:
                g = g_logp[start:stop]
                gz = (p * -g).scatter_add_(-1, lab[start:stop], g)
            else:
                gz = torch.zeros_like(z)
            if g_ent is not None:
                expected_z = (p * z).sum(-1, keepdim=True)
                gz = gz.addcmul_(p * (z - expected_z), g_ent[start:stop], value=-1.0)
            grad[start:stop] = gz / t if t != 1.0 else gz
        return grad.view_as(logits), None, None, None


def _chunks(rows: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def _scaled(part: torch.Tensor, temperature: float) -> torch.Tensor:
    z = part.float()
    return z / temperature if temperature != 1.0 else z


def token_logprobs_and_entropy(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, *, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs of ``labels``, entropy) under ``softmax(logits / temperature)``.

    logits: [..., V] finite, any float dtype (computed in float32); labels: [...] int64.
    Returns two [...] float32 tensors (entropy None when not asked), differentiable (once) with
    respect to ``logits``; an output left out of the loss costs nothing in backward.
    """
    logp, ent = _LogprobEntropy.apply(logits, labels, temperature, entropy)
    return logp, ent if entropy else None


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of ``labels`` under ``softmax(logits / temperature)``.

    logits: [B, T, V] (any float dtype; computed in float32); labels: [B, T] int64 → [B, T] float32.
    """
    return token_logprobs_and_entropy(logits, labels, temperature, entropy=False)[0]


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

    Three savings, none of which changes the math (tests/roll/engines/test_logprobs.py):
    - response columns after the longest response (all padding) are not computed (zeros);
    - rows that share a prompt (a GRPO group) run it once: the unique prompts go through the
      model first, their KV cache is expanded to every row, and only the responses are run on top
      of it. Gradients of the shared prompt sum over the rows, as in separate forwards;
    - on top of that cache, responses run in buckets of similar length, each as wide as its
      longest row, so most right padding is never computed either.
    """
    bf16_cpu = _bf16_on_cpu(model)
    # a forward's fixed cost, in tokens' worth of compute, for the length buckets: bf16 on CPU
    # (AMX) computes a token several times faster, so the same fixed cost is worth more tokens
    # (SmolLM2 actor step, 32 rows of 3-32 response tokens, AMX Xeon: 4.3 s at 64, 3.6 at 256;
    # float32 is best at 64: 5.0 s, against 5.8 in a single bucket)
    overhead = 256 if bf16_cpu else 64
    with _attention_backend(bf16_cpu):
        return _response_logprobs(
            model, input_ids, attention_mask, response_len, temperature, with_entropy, overhead
        )


def _bf16_on_cpu(model: torch.nn.Module) -> bool:
    """The model computes in bf16 on CPU: bf16 weights, or bf16 autocast."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return autocast_bf16 or param.dtype == torch.bfloat16


def _attention_backend(bf16_cpu: bool) -> contextlib.AbstractContextManager:
    """The math kernel for attention in bf16 training passes on CPU: torch's CPU flash-attention
    backward is 3-7x slower in bf16 than the plain matmul + softmax one at these sizes (32 rows x
    31 response tokens over a 76-token cache, 9 heads: 48 vs 16 ms a layer, fwd + bwd; a
    SmolLM2 bf16 actor step 3.1 -> 2.5 s). Forward-only passes (reference, old log-probs) and
    float32 keep the default (flash is the faster one there)."""
    if bf16_cpu and torch.is_grad_enabled():
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def _response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    temperature: float,
    with_entropy: bool,
    bucket_overhead: int,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    prompt_len = input_ids.shape[1] - response_len
    used = _used_columns(attention_mask[:, prompt_len:])
    ids, mask = input_ids[:, : prompt_len + used], attention_mask[:, : prompt_len + used]
    keys = torch.cat([ids[:, :prompt_len], mask[:, :prompt_len]], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if prompt_len > 0 and len(unique) < len(keys):
        logprobs, entropy = _shared_prompt_scores(
            model, unique, inverse, ids, mask, prompt_len, temperature, with_entropy, bucket_overhead
        )
    else:
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            logits_to_keep=used + 1,
            use_cache=False,
        ).logits[:, :-1]
        logprobs, entropy = token_logprobs_and_entropy(
            logits, ids[:, prompt_len:], temperature, entropy=with_entropy
        )
    logprobs = _pad_columns(logprobs, response_len)
    if not with_entropy:
        return logprobs
    return logprobs, _pad_columns(entropy, response_len)


def length_buckets(lengths: list[int], max_buckets: int = 4, overhead: int = 64) -> list[tuple[int, int]]:
    """Cut rows sorted by decreasing length into at most ``max_buckets`` contiguous [start, stop)
    runs, each padded to its first (longest) row, minimising padded tokens + ``overhead`` tokens
    per run (a forward's fixed cost). Exact dynamic programme over the rows where the length
    changes: a run that starts inside a block of equal lengths can take the rest of the block
    from the run before it at no extra padding, so some optimal cut uses block starts only (a
    response has at most max_new_tokens distinct lengths, so this stays small for any batch)."""
    n = len(lengths)
    if n == 0:
        return []
    points = [i for i in range(n) if i == 0 or lengths[i] != lengths[i - 1]] + [n]
    inf = float("inf")
    m = len(points)
    best = [[inf] * (max_buckets + 1) for _ in range(m)]  # best[j][k]: rows [0, points[j]) in k runs
    cut = [[0] * (max_buckets + 1) for _ in range(m)]
    best[0][0] = 0
    for j in range(1, m):
        i = points[j]
        for k in range(1, max_buckets + 1):
            for s in range(j):
                start = points[s]
                cost = best[s][k - 1] + (i - start) * lengths[start] + overhead
                if cost < best[j][k]:
                    best[j][k], cut[j][k] = cost, s
    k = min(range(1, max_buckets + 1), key=lambda b: best[m - 1][b])
    runs, j = [], m - 1
    while k:
        s = cut[j][k]
        runs.append((points[s], points[j]))
        j, k = s, k - 1
    return runs[::-1]


def _shared_prompt_scores(
    model: torch.nn.Module,
    unique: torch.Tensor,
    inverse: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    prompt_len: int,
    temperature: float,
    with_entropy: bool,
    bucket_overhead: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, R] log-probs (and entropy) of each row's R response tokens, running each of the U unique
    prompts (``unique`` [U, 2P]: ids then mask) once; ``inverse`` [B] maps rows to their prompt.

    The responses run on top of the prompts' KV cache in buckets of rows of similar length
    (:func:`length_buckets`), each only as wide as its longest response, so right padding is
    mostly not computed. The last response token is never an input (nothing after it is scored).
    """
    prompt_out = model(
        input_ids=unique[:, :prompt_len],
        attention_mask=unique[:, prompt_len:],
        position_ids=position_ids_from_mask(unique[:, prompt_len:]),
        logits_to_keep=1,
        use_cache=True,
    )
    labels = ids[:, prompt_len:]
    # the prompt's last position predicts every row's first response token
    first = token_logprobs_and_entropy(
        prompt_out.logits[inverse], labels[:, :1], temperature, entropy=with_entropy
    )
    rest = labels.shape[1] - 1
    if rest == 0:
        return first
    layers = [(layer.keys, layer.values) for layer in prompt_out.cache.layers]
    lengths = mask[:, prompt_len:].sum(-1)
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    positions = position_ids_from_mask(mask)
    blocks_lp, blocks_ent = [], []
    for start, stop in length_buckets(sorted_lengths, overhead=bucket_overhead):
        rows = order[start:stop]
        width = max(int(sorted_lengths[start]) - 1, 1)  # inputs: response tokens 0 .. len-2
        # per-row copies of the prompt cache (index_select: gradients sum per prompt)
        cache = DynamicCache(ddp_cache_data=[(k[inverse[rows]], v[inverse[rows]]) for k, v in layers])
        out = model(
            input_ids=ids[rows, prompt_len : prompt_len + width],
            attention_mask=mask[rows, : prompt_len + width],
            position_ids=positions[rows, prompt_len : prompt_len + width],
            cache=cache,
            use_cache=True,
        )
        target = labels[rows, 1 : 1 + width]
        lp, ent = token_logprobs_and_entropy(out.logits, target, temperature, entropy=with_entropy)
        blocks_lp.append(_pad_columns(lp, rest))
        blocks_ent.append(_pad_columns(ent, rest) if with_entropy else None)
    restore = torch.argsort(order)  # sorted position of each original row
    logprobs = torch.cat([first[0], torch.cat(blocks_lp)[restore]], dim=1)
    if not with_entropy:
        return logprobs, None
    return logprobs, torch.cat([first[1], torch.cat(blocks_ent)[restore]], dim=1)


def _used_columns(response_attention: torch.Tensor) -> int:
    """1 + the last response column any row attends to (at least 1): the rest is padding."""
    columns = response_attention.any(0).nonzero()
    return int(columns.max()) + 1 if len(columns) else 1


def _pad_columns(values: torch.Tensor, width: int) -> torch.Tensor:
    """[B, r] -> [B, width] with zeros on the right (columns past the longest response)."""
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))
