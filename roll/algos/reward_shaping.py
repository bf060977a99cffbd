"""Turning sequence rewards into what the estimators consume: token rewards and length penalties.

Token rewards (Ziegler et al., 2019, arXiv:1909.08593, sec. 2.2; InstructGPT, Ouyang et al., 2022,
arXiv:2203.02155, eq. 2): the scalar reward of a response lands on its last token, and every token
pays ``kl_coef`` times its KL estimate to the reference policy:

    r_t = -kl_coef * kl_t + [t == last valid token] * R

PPO's GAE and REINFORCE++'s return-to-go start from these.

DAPO's soft overlong punishment (Yu et al., 2025, arXiv:2503.14476, sec. 3.4, eq. 13) penalises a
response that runs into the last ``L_cache`` tokens of the length budget ``L_max``, linearly, so
truncated answers are not rewarded like finished ones yet a response just past the soft limit is
not punished as hard as one that hit the wall:

    R_length(y) = 0                                 if |y| <= L_max - L_cache
                  ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                  -1                                if |y| > L_max

scaled here by a ``penalty`` factor and added to the task reward by the caller.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["overlong_penalty", "token_rewards_from_sequence"]


def token_rewards_from_sequence(
    rewards: Tensor,
    response_mask: Tensor,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
) -> Tensor:
    """Per-token rewards: ``R`` on each row's last valid token, ``- kl_coef * kl`` on every valid token.

    Args:
        rewards: [B] scalar reward per response (integer rewards become float32).
        response_mask: [B, T] 0/1 or bool, 1 on response tokens. Any layout; the "last valid
            token" is the rightmost 1 of the row.
        kl: [B, T] per-token KL estimate to the reference policy (``roll.algos.kl.kl_penalty``),
            or None. Masked positions are ignored (they may hold inf or NaN).
        kl_coef: weight of the KL penalty; must be 0 when ``kl`` is None.

    Returns:
        [B, T] token rewards, dtype of ``rewards``, 0 at masked positions; a row without a valid
        token is all 0 (its reward has nowhere to go). Detached: rewards are data.
    """
    if rewards.dim() != 1 or response_mask.dim() != 2 or rewards.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"expected rewards [B] and response_mask [B, T], got {tuple(rewards.shape)} and "
            f"{tuple(response_mask.shape)}"
        )
    if kl is None and kl_coef != 0:
        raise ValueError(f"kl_coef is {kl_coef} but kl is None; pass the per-token KL or set kl_coef to 0")
    if kl is not None and kl.shape != response_mask.shape:
        raise ValueError(
            f"kl must be [B, T] like response_mask {tuple(response_mask.shape)}, got {tuple(kl.shape)}"
        )
    rewards = rewards.detach()
    if not rewards.is_floating_point():
        rewards = rewards.float()
    valid = response_mask.bool()
    token_rewards = torch.zeros(valid.shape, dtype=rewards.dtype, device=rewards.device)
    if kl is not None and kl_coef != 0:
        kl = kl.detach().to(rewards.dtype)
        token_rewards = torch.where(valid, -kl_coef * kl, token_rewards)
    if valid.shape[1] == 0:
        return token_rewards
    positions = torch.arange(valid.shape[1], device=valid.device)
    last = torch.where(valid, positions, -1).amax(-1, keepdim=True)  # [B, 1]; -1 for an empty row
    end_reward = torch.where(last >= 0, rewards[:, None], torch.zeros_like(rewards[:, None]))
    return token_rewards.scatter_add(1, last.clamp_min(0), end_reward)


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, penalty: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (arXiv:2503.14476, eq. 13), scaled by ``penalty``.

    Args:
        lengths: [B] response lengths in tokens (integer or float).
        max_len: L_max, the generation budget in tokens.
        buffer_len: L_cache, the width of the linear ramp before ``max_len``; 0 < buffer_len <= max_len.
        penalty: the penalty at and beyond ``max_len`` (>= 0); DAPO's eq. 13 is ``penalty=1``.

    Returns:
        [B] float32 (float64 for float64 lengths) reward to add: 0 up to ``max_len - buffer_len``,
        then ``-penalty * (len - (max_len - buffer_len)) / buffer_len``, ``-penalty`` beyond
        ``max_len``.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"need 0 < buffer_len <= max_len, got buffer_len={buffer_len}, max_len={max_len}")
    if penalty < 0:
        raise ValueError(f"penalty is a magnitude and must be >= 0, got {penalty}")
    lengths = lengths.to(torch.promote_types(lengths.dtype, torch.float32))
    soft_start = max_len - buffer_len
    ramp = (soft_start - lengths) / buffer_len * penalty
    out = torch.where(lengths <= max_len, ramp, torch.full_like(lengths, -penalty))
    return torch.where(lengths <= soft_start, torch.zeros_like(lengths), out)
