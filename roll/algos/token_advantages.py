"""Token-level advantages: discounted returns, REINFORCE++, GAE, and batch whitening.

All functions take token rewards or values as [B, T] with a ``response_mask`` [B, T] (1 on response
tokens). The recursions run backwards over *valid* tokens only: a masked position (padding, or an
environment observation inside a multi-turn response) is skipped, so the token before it
discounts straight to the next valid token, and nothing bootstraps past a row's last valid token
(the value after the end of a response is 0). Outputs are 0 at masked positions and detached
(advantages and returns are data, not graph).

REINFORCE++ (Hu, 2025, arXiv:2501.03262): token rewards ``r_t = -beta * KL_t`` plus the
sequence reward on the last token (``roll.algos.reward_shaping.token_rewards_from_sequence``),
return-to-go ``G_t = sum_{s >= t} gamma^(s-t) r_s``, then the advantages are the returns
normalised over the whole global batch (not per prompt group): ``(G - mean) / std``.
REINFORCE++-baseline (same paper, the variant for several samples per prompt, and OpenRLHF's
``reinforce_baseline``) first subtracts each prompt group's mean reward, then does the same.

GAE (Schulman et al., 2015, arXiv:1506.02438, eqs. 11-16):

    delta_t = r_t + gamma * V_{t+1} - V_t,    A_t = delta_t + gamma * lam * A_{t+1},    R_t = A_t + V_t

with ``V`` and ``A`` after a row's last valid token taken as 0.

Whitening (``masked_whiten``) follows verl's ``masked_whiten``: mean and unbiased variance over
the valid tokens of the batch, ``(x - mean) / sqrt(var + eps)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from roll.algos.advantages import compute_grpo_advantages
from roll.algos.aggregation import masked_mean
from roll.algos.reward_shaping import token_rewards_from_sequence

__all__ = [
    "clip_advantages",
    "compute_discounted_returns",
    "compute_gae",
    "compute_reinforce_pp_advantages",
    "compute_reinforce_pp_baseline_advantages",
    "masked_whiten",
]


def _check_tokens(name: str, values: Tensor, response_mask: Tensor) -> None:
    if response_mask.dim() != 2 or values.shape != response_mask.shape:
        raise ValueError(
            f"{name} and response_mask must both be [B, T], got {tuple(values.shape)} and "
            f"{tuple(response_mask.shape)}"
        )


def _check_discount(gamma: float, lam: float = 1.0) -> None:
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``values`` to zero mean and unit variance over the positions where ``mask`` is set.

    ``(x - mean) / sqrt(var + eps)`` with ``mean`` and the unbiased ``var`` (divisor n - 1) taken
    over the valid positions; with ``shift_mean=False`` the mean is added back (scale only).

    Args:
        values: [...] any shape, floating point.
        mask: same shape; 0/1 or bool.
        shift_mean: subtract the mean (True) or only rescale (False).
        eps: added to the variance under the square root.

    Returns:
        Same shape and dtype as ``values``, 0 at masked positions. With a single valid position
        (no variance) it is 0 (``shift_mean``) or the value itself; with none, all 0.
    """
    if values.shape != mask.shape:
        raise ValueError(
            f"values and mask must have the same shape, got {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    valid = mask.bool()
    mean = masked_mean(values, valid)
    centered = torch.where(valid, values - mean, torch.zeros_like(values))
    var = centered.square().sum() / (valid.sum() - 1).clamp_min(1)
    whitened = centered * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(valid, whitened, torch.zeros_like(whitened))


def clip_advantages(advantages: Tensor, max_abs: float | None) -> Tensor:
    """Clamp advantages to ``[-max_abs, max_abs]``; ``max_abs=None`` returns them unchanged.

    Args:
        advantages: [...] any shape.
        max_abs: bound (> 0) on ``|A|``, or None for no clipping.

    Returns:
        Same shape and dtype as ``advantages``.
    """
    if max_abs is None:
        return advantages
    if max_abs <= 0:
        raise ValueError(f"max_abs must be > 0 or None (no clipping), got {max_abs}")
    return advantages.clamp(-max_abs, max_abs)


def compute_discounted_returns(token_rewards: Tensor, response_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Return-to-go ``G_t = r_t + gamma * G_{next valid token}`` of every valid token.

    Args:
        token_rewards: [B, T] per-token rewards (``token_rewards_from_sequence``); masked
            positions are ignored.
        response_mask: [B, T] 0/1 or bool, 1 on response tokens.
        gamma: discount in [0, 1].

    Returns:
        [B, T] returns, dtype of ``token_rewards``, 0 at masked positions, detached.
    """
    _check_tokens("token_rewards", token_rewards, response_mask)
    _check_discount(gamma)
    valid = response_mask.bool()
    rewards = torch.where(valid, token_rewards.detach(), torch.zeros_like(token_rewards))
    running = rewards.new_zeros(rewards.shape[0])
    returns = []
    for t in reversed(range(rewards.shape[1])):
        step = rewards[:, t] + gamma * running
        running = torch.where(valid[:, t], step, running)
        returns.append(torch.where(valid[:, t], step, torch.zeros_like(step)))
    return torch.stack(returns[::-1], dim=1) if returns else rewards.clone()


def compute_reinforce_pp_advantages(
    rewards: Tensor,
    response_mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++ advantages (arXiv:2501.03262): batch-whitened return-to-go of token rewards.

    ``masked_whiten(compute_discounted_returns(token_rewards_from_sequence(rewards, mask, kl,
    kl_coef), mask, gamma), mask, eps=eps)``; the mean and std are over every valid token of the
    batch.

    Args:
        rewards: [B] scalar reward per response.
        response_mask: [B, T] 0/1 or bool, 1 on response tokens.
        kl: [B, T] per-token KL estimate to the reference (KL in the reward), or None.
        kl_coef: beta, weight of the per-token KL penalty; 0 when ``kl`` is None.
        gamma: discount in [0, 1] (REINFORCE++ uses 1).
        eps: added to the variance when whitening.

    Returns:
        [B, T] advantages, float, 0 at masked positions, detached.
    """
    token_rewards = token_rewards_from_sequence(rewards, response_mask, kl, kl_coef)
    returns = compute_discounted_returns(token_rewards, response_mask, gamma)
    return masked_whiten(returns, response_mask, eps=eps)


def compute_reinforce_pp_baseline_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++-baseline: subtract each group's mean reward, then ``compute_reinforce_pp_advantages``.

    A group of size 1, or whose rewards are all equal, contributes a centred reward of exactly 0
    (only its KL penalty, if any, remains).

    Args:
        rewards: [B] scalar reward per response.
        group_ids: [B] int64 prompt-group id of each response (any values, any order).
        response_mask, kl, kl_coef, gamma, eps: as in ``compute_reinforce_pp_advantages``.

    Returns:
        [B, T] advantages, float, 0 at masked positions, detached.
    """
    centered = compute_grpo_advantages(rewards.detach(), group_ids, norm_by_std=False)
    return compute_reinforce_pp_advantages(
        centered, response_mask, kl=kl, kl_coef=kl_coef, gamma=gamma, eps=eps
    )


def compute_gae(
    token_rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (arXiv:1506.02438, eq. 16) over the valid tokens of each row.

    Backwards over valid tokens: ``delta_t = r_t + gamma * V_next - V_t`` and
    ``A_t = delta_t + gamma * lam * A_next``, where ``V_next`` and ``A_next`` belong to the next
    valid token of the row and are 0 after its last one; ``returns = A + V``.

    Args:
        token_rewards: [B, T] per-token rewards (``token_rewards_from_sequence``).
        values: [B, T] critic values V(s_t) of the policy that generated the samples.
        response_mask: [B, T] 0/1 or bool, 1 on response tokens; values and rewards at masked
            positions are ignored (they may be garbage).
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1] (1: Monte-Carlo return minus V; 0: one-step TD error).

    Returns:
        ``(advantages, returns)``, both [B, T] in the dtype of ``values``, 0 at masked positions,
        detached. Not whitened (``masked_whiten`` the advantages if wanted).
    """
    _check_tokens("token_rewards", token_rewards, response_mask)
    _check_tokens("values", values, response_mask)
    _check_discount(gamma, lam)
    valid = response_mask.bool()
    values = torch.where(valid, values.detach(), torch.zeros_like(values))
    rewards = torch.where(valid, token_rewards.detach().to(values.dtype), torch.zeros_like(values))
    next_value = values.new_zeros(values.shape[0])
    next_advantage = values.new_zeros(values.shape[0])
    advantages = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
        advantages.append(torch.where(valid[:, t], advantage, torch.zeros_like(advantage)))
    adv = torch.stack(advantages[::-1], dim=1) if advantages else values.clone()
    returns = torch.where(valid, adv + values, torch.zeros_like(adv))
    return adv, returns
