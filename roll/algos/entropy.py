"""Per-token entropy of the policy from its logits, in bounded memory.

For logits ``z`` over a vocabulary of V tokens, ``p = softmax(z)`` and

    H(p) = -sum_k p_k log p_k = logsumexp(z) - sum_k p_k z_k

(since ``log p_k = z_k - logsumexp(z)``). Its gradient is ``dH/dz_k = -p_k (z_k - sum_j p_j z_j)``.

A language model's logits are [B, T, V] with V ~ 150k: a float32 softmax of a whole micro-batch
(e.g. 8 x 4096 x 151936 x 4 bytes = 20 GB) is often more than the logits themselves. We compute
forward and backward a chunk of token rows at a time inside one autograd function, so the extra
memory is a few float32 buffers of ``chunk_rows * V`` values, whatever B and T are, and nothing
of size [B, T, V] is saved for backward besides the logits the caller already holds.
Entropy regularisation for policy gradients: Williams & Peng (1991); used as a bonus in A3C
(Mnih et al., 2016, arXiv:1602.01783, sec. 4) and PPO (arXiv:1707.06347, eq. 9).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["entropy_from_logits"]


def _chunk_probs(
    logits2d: Tensor, start: int, stop: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """(z, p, logsumexp) of rows ``start:stop`` in ``dtype``.

    -inf logits (banned tokens) are raised to the dtype's lowest finite value, as
    torch.distributions.Categorical does, so ``p * z`` is ``0 * finite`` and not NaN.
    """
    z = logits2d[start:stop].to(dtype).clamp(min=torch.finfo(dtype).min)
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    return z, torch.exp(z - lse), lse.squeeze(-1)


class _ChunkedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits2d: Tensor, chunk_rows: int, dtype: torch.dtype) -> Tensor:
        out = torch.empty(logits2d.shape[0], dtype=dtype, device=logits2d.device)
        for start in range(0, logits2d.shape[0], chunk_rows):
            stop = start + chunk_rows
            z, p, lse = _chunk_probs(logits2d, start, stop, dtype)
            out[start:stop] = lse - (p * z).sum(-1)
        ctx.save_for_backward(logits2d)
        ctx.chunk_rows = chunk_rows
        ctx.dtype = dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor, None, None]:
        (logits2d,) = ctx.saved_tensors
        grad = torch.empty_like(logits2d)
        for start in range(0, logits2d.shape[0], ctx.chunk_rows):
            stop = start + ctx.chunk_rows
            z, p, _ = _chunk_probs(logits2d, start, stop, ctx.dtype)
            expected_z = (p * z).sum(-1, keepdim=True)
            grad[start:stop] = (-grad_out[start:stop, None] * p * (z - expected_z)).to(grad.dtype)
        return grad, None, None


def entropy_from_logits(logits: Tensor, chunk_rows: int = 1024) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension, computed ``chunk_rows`` rows at a time.

    Args:
        logits: [B, T, V] (any leading shape [..., V]) unnormalised log-probabilities, any
            floating dtype; -inf entries (banned tokens) are allowed as long as each row has a
            finite one.
        chunk_rows: token rows (of the flattened [B * T, V]) per chunk; the extra memory is a
            few ``chunk_rows * V`` float32 buffers. Results do not depend on it.

    Returns:
        [B, T] (the leading shape) entropy in nats, float32 (float64 for float64 logits).
        Differentiable with respect to ``logits`` (once; no double backward).
    """
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be [..., V] with V > 0, got {tuple(logits.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    flat = logits.reshape(-1, logits.shape[-1])
    return _ChunkedEntropy.apply(flat, chunk_rows, dtype).reshape(logits.shape[:-1])
