"""PPO's clipped value (critic) loss and the explained variance of the critic.

PPO (Schulman et al., 2017, arXiv:1707.06347, eq. 9 uses the squared error ``(V - V_targ)^2``);
the clipped variant from OpenAI baselines' ``ppo2`` (one of the "code-level optimizations" that
Engstrom et al., 2020, arXiv:2005.12729, list as "value function clipping") limits how far a
value may move from the one that produced the returns:

    L_V = 0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)

The returns ``R`` are the GAE targets ``A + V_old`` (``roll.algos.token_advantages.compute_gae``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from roll.algos.aggregation import LossAgg, _masked, _safe_divide, aggregate_loss, masked_mean

__all__ = ["explained_variance", "value_loss"]


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var[R - V] / Var[R]`` over valid tokens: 1 is a perfect critic, 0 no better than a constant.

    Args:
        values, returns, mask: [B, T] (any shape, all the same).

    Returns:
        0-dim tensor; 0 when the returns have no variance (nothing to explain) or nothing is valid.
    """
    valid = mask.bool()

    def masked_var(x: Tensor) -> Tensor:
        return masked_mean((x - masked_mean(x, valid)).square(), valid)

    var_returns = masked_var(returns)
    ratio = _safe_divide(masked_var(returns - values), var_returns)
    return torch.where(var_returns > 0, 1.0 - ratio, torch.zeros_like(ratio))


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None = 0.2,
    agg: LossAgg = "token-mean",
    *,
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped critic loss ``0.5 * max((v - R)^2, (clip(v, old - c, old + c) - R)^2)``, aggregated.

    Gradients flow into ``values`` only (``old_values`` and ``returns`` are detached here); a
    token whose clipped error is the larger one gets exactly zero gradient.

    Args:
        values: [B, T] critic predictions being trained.
        old_values: [B, T] predictions of the critic that produced the returns.
        returns: [B, T] regression targets (GAE returns).
        mask: [B, T] 0/1 or bool, 1 on response tokens.
        clip_range: c, the largest move of a value away from ``old_values`` that the loss
            rewards; None for the plain squared error ``0.5 * (v - R)^2``.
        agg: aggregation mode (``roll.algos.aggregation.aggregate_loss``).
        norm_len: divisor for ``agg="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, stats)``: 0-dim loss and detached 0-dim stats ``value_clip_frac`` (share of valid
        tokens where the clipped error is strictly larger; 0 with ``clip_range=None``) and
        ``explained_variance`` of ``values`` for ``returns`` (see ``explained_variance``).
    """
    if not (values.shape == old_values.shape == returns.shape == mask.shape) or values.dim() != 2:
        raise ValueError(
            "values, old_values, returns and mask must all be [B, T], got "
            f"{tuple(values.shape)}, {tuple(old_values.shape)}, {tuple(returns.shape)}, {tuple(mask.shape)}"
        )
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"clip_range must be > 0 or None (no clipping), got {clip_range}")
    valid = mask.bool()
    # Zero padding first so garbage there (inf, NaN) cannot reach the backward pass.
    values = _masked(values, valid)
    old_values = _masked(old_values.detach(), valid)
    returns = _masked(returns.detach(), valid)
    unclipped = (values - returns).square()
    if clip_range is None:
        per_token = 0.5 * unclipped
        clip_active = torch.zeros_like(valid)
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
        clipped = (clipped_values - returns).square()
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = aggregate_loss(per_token, valid, agg, norm_len=norm_len)

    with torch.no_grad():
        stats = {
            "value_clip_frac": masked_mean(clip_active.to(values.dtype), valid),
            "explained_variance": explained_variance(values, returns, valid),
        }
    return loss, stats
