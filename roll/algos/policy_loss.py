"""PPO clipped policy loss (with dual clip), the combined actor loss, and the GRPO loss.

PPO (Schulman et al., 2017, arXiv:1707.06347, eq. 7) maximises

    L_CLIP = E_t[ min(r_t * A_t, clip(r_t, 1 - eps, 1 + eps) * A_t) ],  r_t = pi(a_t) / pi_old(a_t)

so the loss we minimise per token is ``max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))``.
Separate lower and upper bounds are DAPO's "clip-higher" (Yu et al., 2025, arXiv:2503.14476,
eq. 10); with ``eps_low == eps_high`` it is plain PPO.

Dual-clip PPO (Ye et al., 2020, arXiv:1912.09729, sec. 3.2, eq. 5) also bounds the loss of a token
with a negative advantage by ``-A * c`` (c > 1): when ``r`` is huge, ``-A * r`` would otherwise
be unbounded and one stale sample could dominate the update.

GRPO (DeepSeekMath, arXiv:2402.03300, sec. 4.1.1, eq. 3) adds ``beta * D_KL(pi || pi_ref)`` to that
loss, per token, with the k3 estimator (see ``roll.algos.kl``). ``compute_actor_loss`` combines a
policy term (PPO or GSPO, ``roll.algos.gspo``), the KL term (in the loss as GRPO does, or only
reported when the KL already went into the reward as in PPO-RLHF and REINFORCE++) and an optional
entropy bonus, all configured by one frozen ``ActorLossParams``.

Aggregation modes and masked means live in ``roll.algos.aggregation`` and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from roll.algos.aggregation import LOSS_AGG_MODES, LossAgg, _masked, aggregate_loss, masked_mean
from roll.algos.gspo import gspo_policy_loss
from roll.algos.kl import KLKind, kl_penalty

__all__ = [
    "ActorLossParams",
    "LossAgg",
    "PolicyLossName",
    "aggregate_loss",
    "compute_actor_loss",
    "grpo_loss",
    "masked_mean",
    "ppo_clip_policy_loss",
]

PolicyLossName = Literal["ppo", "gspo"]


def ppo_clip_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    clip_ratio_c: float | None = None,
    agg: LossAgg = "token-mean",
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss (arXiv:1707.06347 eq. 7, with DAPO's asymmetric clip).

    Per token: ``ratio = exp(logp - old_logp)`` and
    ``loss = max(-A * ratio, -A * clip(ratio, 1 - clip_eps_low, 1 + clip_eps_high))``;
    with ``clip_ratio_c`` set, tokens with ``A < 0`` get ``min(loss, -A * clip_ratio_c)``
    (dual clip, arXiv:1912.09729 eq. 5). Then ``aggregate_loss(loss, mask, agg)``.

    Gradients flow into ``logp`` only: ``old_logp`` and ``advantages`` are detached here. Where
    the clipped term or the dual clip is active the token's gradient is exactly 0.

    Args:
        logp: [B, T] log-probs of the sampled tokens under the policy being trained.
        old_logp: [B, T] log-probs under the policy that generated the samples.
        advantages: [B, T] per-token advantages (see ``broadcast_to_tokens``).
        mask: [B, T] 0/1 or bool, 1 on response tokens.
        clip_eps_low: ratio lower bound is ``1 - clip_eps_low``.
        clip_eps_high: ratio upper bound is ``1 + clip_eps_high``.
        clip_ratio_c: dual-clip constant c > 1 (the paper uses 3), or None for plain PPO; None
            leaves the loss and the stats exactly as without it.
        agg: how per-token losses become a scalar (see ``aggregate_loss``).
        norm_len: the divisor of ``agg="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, stats)``: 0-dim loss, and detached 0-dim stats over valid tokens:
        ``clip_frac`` share of tokens where the clipped term is strictly larger (active);
        ``ratio_mean`` and ``ratio_max`` of the importance ratio (``ratio_max`` is 0 with no valid
        token); ``approx_kl`` token mean of ``0.5 * (logp - old_logp)**2``, Schulman's k2
        estimate of KL(pi_old || pi), chosen because it is never negative; with
        ``clip_ratio_c`` set, also ``dual_clip_frac``, the share of tokens where ``A < 0`` and
        the dual clip bound is strictly below the PPO loss (active).
    """
    if not (logp.shape == old_logp.shape == advantages.shape == mask.shape) or logp.dim() != 2:
        raise ValueError(
            "logp, old_logp, advantages and mask must all be [B, T], got "
            f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(advantages.shape)}, "
            f"{tuple(mask.shape)}"
        )
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (the dual-clip paper uses 3) or None, got {clip_ratio_c}")
    valid = mask.bool()
    advantages = advantages.detach()
    # Zero the log-ratio on padding so garbage log-probs there cannot overflow exp into inf/NaN,
    # whose gradient (0 * inf) would poison the whole backward pass.
    log_ratio = _masked(logp - old_logp.detach(), valid)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped)
    if clip_ratio_c is not None:
        dual_bound = -advantages * clip_ratio_c
        negative = advantages < 0
        dual_active = negative & (per_token > dual_bound)
        per_token = torch.where(negative, torch.minimum(per_token, dual_bound), per_token)
    loss = aggregate_loss(per_token, valid, agg, norm_len=norm_len)

    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), valid),
            "ratio_mean": masked_mean(ratio, valid),
            "ratio_max": _masked(ratio, valid).max() if ratio.numel() else ratio.sum(),
            "approx_kl": masked_mean(0.5 * log_ratio.square(), valid),
        }
        if clip_ratio_c is not None:
            stats["dual_clip_frac"] = masked_mean(dual_active.to(ratio.dtype), valid)
    return loss, stats


@dataclass(frozen=True)
class ActorLossParams:
    """Everything that shapes the actor loss; one frozen value per run (see ``compute_actor_loss``).

    Attributes:
        loss: policy term: ``"ppo"`` (token ratio, ``ppo_clip_policy_loss``) or ``"gspo"``
            (sequence ratio, ``roll.algos.gspo.gspo_policy_loss``; its policy term always
            averages over sequences, ``agg`` then only shapes the KL and entropy terms).
        clip_eps_low: ratio lower bound ``1 - clip_eps_low`` (GSPO uses ~3e-4).
        clip_eps_high: ratio upper bound ``1 + clip_eps_high`` (DAPO uses 0.28, GSPO ~4e-4).
        clip_ratio_c: dual-clip constant c > 1 for negative advantages, None to disable
            (``"ppo"`` only).
        kl_coef: weight of the KL-to-reference term in the loss (``use_kl_loss=True``).
        kl_kind: KL estimator for that term, ``"k1"``, ``"k2"`` or ``"k3"`` (``roll.algos.kl``).
        agg: loss aggregation (``roll.algos.aggregation``), shared by all terms.
        norm_len: constant divisor for ``agg="seq-mean-token-sum-norm"`` (generation budget in
            tokens); required by that mode and must be None otherwise.
        entropy_coef: weight of the entropy bonus; the loss gets ``- entropy_coef * entropy``,
            so a positive value rewards exploration. Needs ``entropy=`` in ``compute_actor_loss``.
        use_kl_loss: True puts ``kl_coef * KL`` in the loss (GRPO). False when the KL penalty
            already went into the reward (PPO, REINFORCE++): the loss omits it, but the KL is
            still computed and reported as ``loss/kl`` when ``ref_logp`` is given.
    """

    loss: PolicyLossName = "ppo"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    clip_ratio_c: float | None = None
    kl_coef: float = 0.0
    kl_kind: KLKind = "k3"
    agg: LossAgg = "token-mean"
    norm_len: int | None = None
    entropy_coef: float = 0.0
    use_kl_loss: bool = True

    def __post_init__(self) -> None:
        if self.loss not in get_args(PolicyLossName):
            raise ValueError(f"unknown actor loss {self.loss!r}; set loss to 'ppo' or 'gspo'")
        if self.clip_eps_low < 0 or self.clip_eps_high < 0:
            raise ValueError(
                "clip_eps_low and clip_eps_high must be >= 0, got "
                f"{self.clip_eps_low} and {self.clip_eps_high}"
            )
        if self.clip_ratio_c is not None:
            if self.loss != "ppo":
                raise ValueError(
                    "clip_ratio_c (dual clip) applies to loss 'ppo' only; set it to None for gspo"
                )
            if self.clip_ratio_c <= 1.0:
                raise ValueError(
                    f"clip_ratio_c must be > 1 (the paper uses 3) or None, got {self.clip_ratio_c}"
                )
        if self.kl_kind not in get_args(KLKind):
            raise ValueError(f"unknown kl_kind {self.kl_kind!r}; use 'k1', 'k2' or 'k3'")
        if self.agg not in LOSS_AGG_MODES:
            raise ValueError(f"unknown agg {self.agg!r}; use one of {', '.join(map(repr, LOSS_AGG_MODES))}")
        if self.agg == "seq-mean-token-sum-norm":
            if self.norm_len is None or self.norm_len <= 0:
                raise ValueError(
                    f"agg 'seq-mean-token-sum-norm' needs norm_len > 0, got {self.norm_len!r}; "
                    "set norm_len to the generation budget (max new tokens)"
                )
        elif self.norm_len is not None:
            raise ValueError(
                f"norm_len is only used by agg 'seq-mean-token-sum-norm' (agg is {self.agg!r}); remove it"
            )


def compute_actor_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    cfg: ActorLossParams,
    *,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Actor loss = policy term + KL term (if in the loss) - entropy bonus.

    ``total = policy + kl_coef * aggregate(kl_penalty(logp, ref_logp, kl_kind))`` (the KL term
    only with ``use_kl_loss``) ``- entropy_coef * aggregate(entropy)`` (only when ``entropy`` is
    given). Every term is aggregated with ``cfg.agg`` (GSPO's policy term excepted, see
    ``ActorLossParams.loss``).

    Args:
        logp, old_logp, mask: [B, T], as in ``ppo_clip_policy_loss``.
        ref_logp: [B, T] log-probs under the frozen reference policy (detached here), or None.
            None is an error only if the KL enters the loss with ``kl_coef != 0``.
        advantages: [B, T] per-token advantages ([B] also accepted for ``loss="gspo"``).
        cfg: loss configuration.
        entropy: [B, T] per-token policy entropy (``roll.algos.entropy.entropy_from_logits``),
            with gradient; required when ``cfg.entropy_coef != 0``.

    Returns:
        ``(loss, stats)``: 0-dim total loss, and detached 0-dim stats ``loss/policy``,
        ``loss/kl`` (aggregated KL before scaling by ``kl_coef``; 0 when ``ref_logp`` is None),
        ``loss/entropy`` (only when ``entropy`` is given), ``loss/total`` and the policy term's
        stats prefixed with ``actor/`` (``actor/clip_frac``, ``actor/ratio_mean``, ...).
    """
    if cfg.loss == "ppo":
        policy_loss, policy_stats = ppo_clip_policy_loss(
            logp,
            old_logp,
            advantages,
            mask,
            clip_eps_low=cfg.clip_eps_low,
            clip_eps_high=cfg.clip_eps_high,
            clip_ratio_c=cfg.clip_ratio_c,
            agg=cfg.agg,
            norm_len=cfg.norm_len,
        )
    else:
        policy_loss, policy_stats = gspo_policy_loss(
            logp, old_logp, advantages, mask, clip_eps_low=cfg.clip_eps_low, clip_eps_high=cfg.clip_eps_high
        )
    valid = mask.bool()
    if ref_logp is None:
        if cfg.use_kl_loss and cfg.kl_coef != 0:
            raise ValueError(
                f"kl_coef is {cfg.kl_coef} but ref_logp is None; "
                "pass the reference log-probs or set kl_coef to 0"
            )
        kl = torch.zeros((), dtype=policy_loss.dtype, device=policy_loss.device)
    else:
        # Only differentiate the KL when it is part of the loss; otherwise it is a logged number.
        with torch.set_grad_enabled(cfg.use_kl_loss and torch.is_grad_enabled()):
            # Padding is zeroed first, for the same reason as the log-ratio in ppo_clip_policy_loss.
            per_token_kl = kl_penalty(_masked(logp, valid), _masked(ref_logp.detach(), valid), cfg.kl_kind)
            kl = aggregate_loss(per_token_kl, valid, cfg.agg, norm_len=cfg.norm_len)
    total = policy_loss + cfg.kl_coef * kl if cfg.use_kl_loss else policy_loss

    stats = {"loss/policy": policy_loss.detach(), "loss/kl": kl.detach()}
    if entropy is None:
        if cfg.entropy_coef != 0:
            raise ValueError(
                f"entropy_coef is {cfg.entropy_coef} but entropy is None; pass "
                "entropy=entropy_from_logits(logits) or set entropy_coef to 0"
            )
    else:
        if entropy.shape != mask.shape:
            raise ValueError(
                f"entropy must be [B, T] like mask {tuple(mask.shape)}, got {tuple(entropy.shape)}"
            )
        entropy_term = aggregate_loss(entropy, valid, cfg.agg, norm_len=cfg.norm_len)
        total = total - cfg.entropy_coef * entropy_term
        stats["loss/entropy"] = entropy_term.detach()
    stats["loss/total"] = total.detach()
    stats.update({f"actor/{name}": value for name, value in policy_stats.items()})
    return total, stats


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
    kl_kind), mask, agg)``. The KL term is aggregated the same way as the policy term. This is
    ``compute_actor_loss`` with ``ActorLossParams(loss="ppo", use_kl_loss=True, ...)``.

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
    cfg = ActorLossParams(
        loss="ppo",
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        kl_coef=kl_coef,
        kl_kind=kl_kind,
        agg=agg,
        use_kl_loss=True,
    )
    return compute_actor_loss(logp, old_logp, ref_logp, advantages, mask, cfg)
