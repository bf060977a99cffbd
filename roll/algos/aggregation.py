"""How per-token losses [B, T] become one scalar, and masked means.

Aggregation (``LossAgg``) decides how sequences of different lengths are weighted:

- ``token-mean``: every valid token in the batch weighs the same (DAPO, arXiv:2503.14476, eq. 12).
- ``seq-mean-token-mean``: mean over tokens within a sequence, then over sequences (GRPO,
  arXiv:2402.03300, eq. 3); a long response's tokens each weigh less.
- ``seq-mean-token-sum``: sum over tokens, mean over sequences; no length normalisation inside a
  sequence.
- ``seq-mean-token-sum-norm``: sum over tokens divided by a constant ``norm_len`` (the generation
  budget, not the sequence's own length), mean over sequences. This is Dr. GRPO's fix for the
  length bias of per-sequence normalisation (Liu et al., 2025, arXiv:2503.20783, sec. 3.1 and
  eq. 3 without ``1/|o_i|``; their code divides by the max generation length).

All functions take ``mask`` as [B, T] with 1 (or True) on tokens that count and 0 on prompt and
padding. Values at masked positions are never read into a sum (they may be inf or NaN), and a
sequence or batch without valid tokens contributes 0 instead of NaN.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = ["LOSS_AGG_MODES", "LossAgg", "aggregate_loss", "masked_mean"]

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
LOSS_AGG_MODES: tuple[str, ...] = get_args(LossAgg)


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` with masked positions set to 0 via ``where``: ``inf * 0`` would be NaN."""
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, and 0 where ``den == 0`` (with finite gradients there)."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), 0.0)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is set.

    Args:
        values: [...] any shape.
        mask: same shape as ``values``; 0/1 or bool.
        dim: reduce this dimension only, or everything when None.

    Returns:
        0-dim tensor (``dim=None``) or ``values`` with ``dim`` reduced; 0 where nothing is valid.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return _safe_divide(_masked(values, mask).sum(), mask.sum())
    return _safe_divide(_masked(values, mask).sum(dim), mask.sum(dim))


def aggregate_loss(values: Tensor, mask: Tensor, mode: LossAgg, *, norm_len: int | None = None) -> Tensor:
    """Reduce per-token values [B, T] to a scalar loss.

    Args:
        values: [B, T] per-token loss (or any per-token quantity, e.g. a KL estimate).
        mask: [B, T] 0/1 or bool; 1 on tokens that count.
        mode: ``"token-mean"``: ``sum(values * mask) / sum(mask)``.
            ``"seq-mean-token-mean"``: mean, over sequences with at least one valid token, of
            each sequence's token mean.
            ``"seq-mean-token-sum"``: mean, over all B sequences, of each sequence's token sum
            (an empty sequence sums to 0 and still counts in B: the divisor stays a constant).
            ``"seq-mean-token-sum-norm"``: as ``seq-mean-token-sum`` with every sum divided by
            ``norm_len`` (Dr. GRPO).
        norm_len: the constant divisor of ``seq-mean-token-sum-norm``, in tokens; set it to the
            generation budget (max new tokens). Required by that mode, ignored by the others.

    Returns:
        0-dim tensor; 0 (not NaN) when no token is valid.
    """
    if values.dim() != 2 or values.shape != mask.shape:
        raise ValueError(
            f"values and mask must both be [B, T], got {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return masked_mean(values, mask)
    seq_sum = _masked(values, mask).sum(-1)  # [B]
    if mode == "seq-mean-token-mean":
        seq_len = mask.sum(-1)
        seq_mean = _safe_divide(seq_sum, seq_len)
        return masked_mean(seq_mean, (seq_len > 0).to(values.dtype))
    if mode == "seq-mean-token-sum":
        return seq_sum.mean() if seq_sum.numel() else seq_sum.sum()
    if mode == "seq-mean-token-sum-norm":
        if norm_len is None or norm_len <= 0:
            raise ValueError(
                f"loss aggregation 'seq-mean-token-sum-norm' needs norm_len > 0, got {norm_len!r}; "
                "set norm_len to the generation budget (max new tokens)"
            )
        seq_sum = seq_sum / norm_len
        return seq_sum.mean() if seq_sum.numel() else seq_sum.sum()
    raise ValueError(f"unknown loss aggregation {mode!r}; use one of {', '.join(map(repr, LOSS_AGG_MODES))}")
