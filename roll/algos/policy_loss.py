"""PPO clipped policy loss, the GRPO loss, and how per-token losses become one scalar.

PPO (Schulman et al., 2017, arXiv:1707.06347, eq. 7) maximises

    L_CLIP = E_t[ min(r_t * A_t, clip(r_t, 1 - eps, 1 + eps) * A_t) ],  r_t = pi(a_t) / pi_old(a_t)

so the loss we minimise per token is ``max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))``.
Separate lower and upper bounds are DAPO's "clip-higher" (Yu et al., 2025, arXiv:2503.14476,
eq. 10); with ``eps_low == eps_high`` it is plain PPO.

GRPO (DeepSeekMath, arXiv:2402.03300, sec. 4.1.1, eq. 3) adds ``beta * D_KL(pi || pi_ref)`` to that
loss, per token, with the k3 estimator (see ``roll.algos.kl``).

Aggregation (``LossAgg``) decides how sequences of different lengths are weighted:

- ``token-mean``: every valid token in the batch weighs the same (DAPO, eq. 12).
- ``seq-mean-token-mean``: mean over tokens within a sequence, then over sequences (GRPO, eq. 3);
  a long response's tokens each weigh less.
- ``seq-mean-token-sum``: sum over tokens, mean over sequences; no length normalisation inside a
  sequence (close to Dr. GRPO, arXiv:2503.20783, which divides by a constant instead).

All functions take ``mask`` as [B, T] with 1 (or True) on tokens that count and 0 on prompt and
padding. Values at masked positions are never read into a sum (they may be inf or NaN), and a
sequence or batch without valid tokens contributes 0 instead of NaN.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from roll.algos.kl import KLKind, kl_penalty

__all__ = ["LossAgg", "aggregate_loss", "grpo_loss", "masked_mean", "ppo_clip_policy_loss"]

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]


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


def aggregate_loss(values: Tensor, mask: Tensor, mode: LossAgg) -> Tensor:
    """Reduce per-token values [B, T] to a scalar loss.

    Args:
        values: [B, T] per-token loss (or any per-token quantity, e.g. a KL estimate).
        mask: [B, T] 0/1 or bool; 1 on tokens that count.
        mode: ``"token-mean"``: ``sum(values * mask) / sum(mask)``.
            ``"seq-mean-token-mean"``: mean, over sequences with at least one valid token, of
            each sequence's token mean.
            ``"seq-mean-token-sum"``: mean, over all B sequences, of each sequence's token sum
            (an empty sequence sums to 0 and still counts in B: the divisor stays a constant).

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
    raise ValueError(
        f"unknown loss aggregation {mode!r}; use 'token-mean', 'seq-mean-token-mean' or 'seq-mean-token-sum'"
    )


def ppo_clip_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    agg: LossAgg = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss (arXiv:1707.06347 eq. 7, with DAPO's asymmetric clip).

    Per token: ``ratio = exp(logp - old_logp)`` and
    ``loss = max(-A * ratio, -A * clip(ratio, 1 - clip_eps_low, 1 + clip_eps_high))``,
    then ``aggregate_loss(loss, mask, agg)``.

    Gradients flow into ``logp`` only: ``old_logp`` and ``advantages`` are detached here. Where
    the clipped term is active the token's gradient is exactly 0.

    Args:
        logp: [B, T] log-probs of the sampled tokens under the policy being trained.
        old_logp: [B, T] log-probs under the policy that generated the samples.
        advantages: [B, T] per-token advantages (see ``broadcast_to_tokens``).
        mask: [B, T] 0/1 or bool, 1 on response tokens.
        clip_eps_low: ratio lower bound is ``1 - clip_eps_low``.
        clip_eps_high: ratio upper bound is ``1 + clip_eps_high``.
        agg: how per-token losses become a scalar (see ``aggregate_loss``).

    Returns:
        ``(loss, stats)``: 0-dim loss, and detached 0-dim stats over valid tokens:
        ``clip_frac`` share of tokens where the clipped term is strictly larger (active);
        ``ratio_mean`` and ``ratio_max`` of the importance ratio (``ratio_max`` is 0 with no valid
        token); ``approx_kl`` token mean of ``0.5 * (logp - old_logp)**2``, Schulman's k2
        estimate of KL(pi_old || pi), chosen because it is never negative.
    """
    if not (logp.shape == old_logp.shape == advantages.shape == mask.shape) or logp.dim() != 2:
        raise ValueError(
            "logp, old_logp, advantages and mask must all be [B, T], got "
            f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(advantages.shape)}, "
            f"{tuple(mask.shape)}"
        )
    valid = mask.bool()
    advantages = advantages.detach()
    # Zero the log-ratio on padding so garbage log-probs there cannot overflow exp into inf/NaN,
    # whose gradient (0 * inf) would poison the whole backward pass.
    log_ratio = _masked(logp - old_logp.detach(), valid)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate_loss(per_token, valid, agg)

    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), valid),
            "ratio_mean": masked_mean(ratio, valid),
            "ratio_max": _masked(ratio, valid).max() if ratio.numel() else ratio.sum(),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), valid),
        }
    return loss, stats


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    kl_coef: float,
    kl_kind: KLKind = "k3",
    agg: LossAgg = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss (DeepSeekMath, arXiv:2402.03300, eq. 3): PPO clip loss + kl_coef * KL to ref.

    ``total = ppo_clip_policy_loss(...) + kl_coef * aggregate_loss(kl_penalty(logp, ref_logp,
    kl_kind), mask, agg)``. The KL term is aggregated the same way as the policy term.

    Args:
        logp, old_logp, advantages, mask: [B, T], as in ``ppo_clip_policy_loss``.
        ref_logp: [B, T] log-probs under the frozen reference policy (detached here), or None
            when ``kl_coef == 0``.
        clip_eps_low, clip_eps_high, agg: as in ``ppo_clip_policy_loss``.
        kl_coef: beta in eq. 3; 0 disables the KL term.
        kl_kind: KL estimator, see ``roll.algos.kl.kl_penalty``.

    Returns:
        ``(loss, stats)``: 0-dim total loss, and detached 0-dim stats ``loss/policy``,
        ``loss/kl`` (aggregated KL before scaling by ``kl_coef``; 0 when ``ref_logp`` is None),
        ``loss/total`` and the PPO stats as ``actor/clip_frac``, ``actor/ratio_mean``,
        ``actor/ratio_max``, ``actor/approx_kl``.
    """
    policy_loss, ppo_stats = ppo_clip_policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        agg=agg,
    )
    if ref_logp is None:
        if kl_coef != 0:
            raise ValueError(
                f"kl_coef is {kl_coef} but ref_logp is None; pass the reference log-probs or set kl_coef to 0"
            )
        kl = torch.zeros((), dtype=policy_loss.dtype, device=policy_loss.device)
    else:
        # Padding is zeroed first, for the same reason as the log-ratio in ppo_clip_policy_loss.
        valid = mask.bool()
        per_token_kl = kl_penalty(_masked(logp, valid), _masked(ref_logp.detach(), valid), kl_kind)
        kl = aggregate_loss(per_token_kl, valid, agg)
    total = policy_loss + kl_coef * kl

    stats = {
        "loss/policy": policy_loss.detach(),
        "loss/kl": kl.detach(),
        "loss/total": total.detach(),
    }
    stats.update({f"actor/{name}": value for name, value in ppo_stats.items()})
    return total, stats
