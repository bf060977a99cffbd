"""GSPO: PPO-style clipping on a sequence-level importance ratio.

Group Sequence Policy Optimization (Zheng et al., 2025, arXiv:2507.18071) replaces PPO's per-token
ratio with the length-normalised sequence likelihood ratio (sec. 4.1, eq. 7):

    s_i = (pi(y_i | x) / pi_old(y_i | x)) ** (1 / |y_i|) = exp(mean_t (logp_t - old_logp_t))

and maximises (eq. 5)

    J = 1/G sum_i min(s_i * A_i, clip(s_i, 1 - eps_low, 1 + eps_high) * A_i)

so a whole response is clipped or not. The clip range is tiny (the paper uses 3e-4 / 4e-4)
because s_i is a geometric mean over many tokens.

We implement the token form GSPO-token (sec. 4.3, eqs. 13-14), which admits per-token advantages:

    s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)],   J = 1/G sum_i 1/|y_i| sum_t min(s_it A_it, clip(s_it) A_it)

``s_it`` has the value ``s_i`` and the gradient ``s_i * grad logp_t``; with ``A_it = A_i`` its
objective and gradient equal GSPO's exactly (``d s_i / d logp_t = s_i / |y_i|``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from roll.algos.aggregation import _masked, _safe_divide, aggregate_loss, masked_mean

__all__ = ["gspo_policy_loss"]

# exp(10) ~ 2.2e4: bounds the sequence ratio so one badly off-policy response cannot overflow the
# loss; verl bounds the same log-ratio at 10. The bound is applied to the detached sg[s_i] only,
# so the per-token gradient still flows.
_SEQ_LOG_RATIO_MAX = 10.0


def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 3e-4,
    clip_eps_high: float = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token loss (arXiv:2507.18071 eqs. 13-14), averaged over tokens then sequences.

    Per token: ``ratio_it = exp(logp_t - sg(logp_t) + min(sg(mean_valid(logp - old_logp)), 10))``
    (value ``s_i``) and ``loss = max(-A * ratio, -A * clip(ratio, 1 - clip_eps_low,
    1 + clip_eps_high))``, then ``aggregate_loss(loss, mask, "seq-mean-token-mean")``: the mean
    over sequences with at least one valid token of each sequence's token mean.

    Gradients flow into ``logp`` only; a clipped sequence (with per-sequence advantages) gets
    exactly zero gradient.

    Args:
        logp: [B, T] log-probs of the sampled tokens under the policy being trained.
        old_logp: [B, T] log-probs under the policy that generated the samples.
        advantages: [B] one advantage per sequence (GSPO), or [B, T] per token (GSPO-token).
        mask: [B, T] 0/1 or bool, 1 on response tokens.
        clip_eps_low: sequence ratio lower bound is ``1 - clip_eps_low``.
        clip_eps_high: sequence ratio upper bound is ``1 + clip_eps_high``.

    Returns:
        ``(loss, stats)``: 0-dim loss, and detached 0-dim stats: ``clip_frac`` the
        sequence-mean-token-mean of "the clipped term is strictly larger", which for per-sequence
        advantages is the share of (non-empty) sequences that are clipped; ``ratio_mean`` and
        ``ratio_max`` of the sequence ratio ``s_i`` over non-empty sequences (0 if none);
        ``approx_kl`` token mean of ``0.5 * (logp - old_logp)**2`` as in ``ppo_clip_policy_loss``.
    """
    if logp.dim() != 2 or not (logp.shape == old_logp.shape == mask.shape):
        raise ValueError(
            "logp, old_logp and mask must all be [B, T], got "
            f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape == logp.shape[:1]:
        advantages = advantages[:, None].expand_as(logp)
    elif advantages.shape != logp.shape:
        raise ValueError(
            f"advantages must be [B] or [B, T] with B, T = {tuple(logp.shape)}, got {tuple(advantages.shape)}"
        )
    valid = mask.bool()
    advantages = advantages.detach()
    # Zero padding first: garbage log-probs there must not reach exp (see ppo_clip_policy_loss).
    logp = _masked(logp, valid)
    log_ratio = logp - _masked(old_logp.detach(), valid)
    seq_len = valid.sum(-1).to(logp.dtype)
    seq_log_ratio = _safe_divide(log_ratio.detach().sum(-1), seq_len).clamp(max=_SEQ_LOG_RATIO_MAX)
    # Value s_i on every token of sequence i; gradient s_i * d logp_t.
    ratio = torch.exp(logp - logp.detach() + seq_log_ratio[:, None])
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate_loss(per_token, valid, "seq-mean-token-mean")

    with torch.no_grad():
        nonempty = seq_len > 0
        seq_ratio = torch.exp(seq_log_ratio)
        stats = {
            "clip_frac": aggregate_loss((clipped > unclipped).to(ratio.dtype), valid, "seq-mean-token-mean"),
            "ratio_mean": masked_mean(seq_ratio, nonempty),
            "ratio_max": _masked(seq_ratio, nonempty).max() if seq_ratio.numel() else seq_ratio.sum(),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), valid),
        }
    return loss, stats
