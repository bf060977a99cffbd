"""Group-relative advantages (GRPO, RLOO) and the helpers that spread them over tokens.

GRPO samples a group of G responses per prompt and scores each one against its own group, so no
value network is needed. DeepSeekMath (Shao et al., 2024, arXiv:2402.03300), section 4.1.2,
"outcome supervision":

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)

and every token of response i gets the same A_i. Like the reference implementations (TRL's
``GRPOTrainer``, verl's ``compute_grpo_outcome_advantage``) we use the unbiased sample std
(``torch.std`` default, divisor G - 1) and add ``eps`` to the denominator.

Dr. GRPO (Liu et al., 2025, arXiv:2503.20783, "Understanding R1-Zero-Like Training") argues that
dividing by the std biases training towards too-easy and too-hard prompts and drops it:
``A_i = r_i - mean``; that is ``norm_by_std=False`` here. (Its other change, dividing the
per-sequence token sum by a constant, is the loss aggregation ``"seq-mean-token-sum-norm"``.)

RLOO (REINFORCE Leave-One-Out; Ahmadian et al., 2024, arXiv:2402.14740, after
Kool et al., 2019) baselines each sample with the mean reward of the *other* k - 1 samples of its
group:

    A_i = r_i - 1/(k-1) * sum_{j != i} r_j  =  k/(k-1) * (r_i - mean(r_1..r_k))

which keeps the estimate unbiased (the baseline does not depend on r_i).

Groups are named by ``group_ids`` rather than by position, so a batch may hold its groups in any
order (interleaved after a shuffle, or split across rollout workers and concatenated).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["broadcast_to_tokens", "compute_grpo_advantages", "compute_rloo_advantages", "group_reward_stats"]


class _GroupMoments(NamedTuple):
    """Per-sample and per-group statistics of one batch of rewards.

    ``index`` maps each sample to its dense group number 0..G-1; the other fields have shape [G]
    except ``rewards`` ([N], floating point).
    """

    rewards: Tensor
    index: Tensor
    count: Tensor
    mean: Tensor
    std: Tensor
    constant: Tensor


def _check_rewards(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the same shape as rewards {tuple(rewards.shape)}, "
            f"got {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor (int64), got {group_ids.dtype}")


def _group_moments(rewards: Tensor, group_ids: Tensor) -> _GroupMoments:
    """Mean, unbiased std and size of every group, without a Python loop over groups.

    Args:
        rewards: [N] scalar reward per sample (integer rewards are cast to float32).
        group_ids: [N] integer group label per sample; any values, any order.
    """
    _check_rewards(rewards, group_ids)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    # Dense 0..G-1 labels, so arbitrary ids (prompt hashes, dataset indices) can index [G] tensors.
    _, index = torch.unique(group_ids, return_inverse=True)
    num_groups = int(index.max()) + 1 if index.numel() else 0

    count = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device)
    count.index_add_(0, index, torch.ones_like(rewards))
    total = torch.zeros_like(count).index_add_(0, index, rewards)
    mean = total / count

    # Two-pass variance (sum of squared deviations), as torch.std does: no cancellation error.
    sq_dev = torch.zeros_like(count).index_add_(0, index, (rewards - mean[index]) ** 2)
    std = torch.sqrt(sq_dev / (count - 1).clamp_min(1))
    std = torch.where(count > 1, std, torch.zeros_like(std))

    # A group whose rewards are all equal carries no signal. Detect it exactly with min == max:
    # sum/count can round (3 * 0.1 / 3 != 0.1), and with eps = 0 that residue would become 0/0.
    lo = torch.full_like(count, float("inf")).scatter_reduce(0, index, rewards, "amin")
    hi = torch.full_like(count, float("-inf")).scatter_reduce(0, index, rewards, "amax")
    constant = lo == hi
    return _GroupMoments(rewards, index, count, mean, std, constant)


def compute_grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO outcome advantage of each sample relative to its group (DeepSeekMath, sec. 4.1.2).

    ``A_i = (r_i - mean_g) / (std_g + eps)`` with ``std_g`` the unbiased sample std of group g;
    with ``norm_by_std=False``, ``A_i = r_i - mean_g`` (Dr. GRPO).

    A group of size 1 and a group whose rewards are all equal get advantage exactly 0 (never NaN,
    even with ``eps=0``): they say nothing about which response was better.

    Args:
        rewards: [N] scalar reward per response. Integer rewards are cast to float32.
        group_ids: [N] int64 id of the prompt group each response belongs to. Ids need not be
            contiguous, sorted or start at 0.
        norm_by_std: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to the std before dividing.

    Returns:
        [N] advantages, same floating dtype as ``rewards`` (float32 for integer rewards).
        Not differentiable in any useful sense: rewards are data.
    """
    m = _group_moments(rewards, group_ids)
    centered = m.rewards - m.mean[m.index]
    if norm_by_std:
        centered = centered / (m.std[m.index] + eps)
    flat = m.constant[m.index]  # also true for every group of size 1
    return torch.where(flat, torch.zeros_like(centered), centered)


def compute_rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO advantage: each reward minus the mean of the other rewards in its group (arXiv:2402.14740).

    ``A_i = r_i - mean_{j != i, g(j) = g(i)} r_j``, computed as ``k/(k-1) * (r_i - mean_g)`` for a
    group of size k. A group of size 1 (no other sample to compare with) and a group whose
    rewards are all equal get advantage exactly 0.

    Args:
        rewards: [N] scalar reward per response. Integer rewards are cast to float32.
        group_ids: [N] int64 id of the prompt group of each response (any values, any order).

    Returns:
        [N] advantages, same floating dtype as ``rewards`` (float32 for integer rewards).
    """
    m = _group_moments(rewards, group_ids)
    count = m.count[m.index]
    scale = count / (count - 1).clamp_min(1)
    centered = scale * (m.rewards - m.mean[m.index])
    flat = m.constant[m.index]  # also true for every group of size 1
    return torch.where(flat, torch.zeros_like(centered), centered)


def broadcast_to_tokens(seq_values: Tensor, response_mask: Tensor) -> Tensor:
    """Give every response token its sequence's value (outcome advantages are per sequence).

    Args:
        seq_values: [B] one value per sequence.
        response_mask: [B, T] 1 (or True) on response tokens, 0 on prompt and padding.

    Returns:
        [B, T] ``seq_values[:, None] * response_mask``, dtype of ``seq_values``.
    """
    if seq_values.dim() != 1 or response_mask.dim() != 2:
        raise ValueError(
            f"expected seq_values [B] and response_mask [B, T], got {tuple(seq_values.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    if seq_values.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"seq_values has {seq_values.shape[0]} sequences but response_mask has "
            f"{response_mask.shape[0]} rows"
        )
    return seq_values[:, None] * response_mask.to(seq_values.dtype)


def group_reward_stats(rewards: Tensor, group_ids: Tensor) -> dict[str, float]:
    """How much learning signal a batch of groups carries.

    GRPO learns nothing from a group whose rewards are all equal (every advantage is 0), so a high
    share of such groups means prompts are too easy or too hard (DAPO, arXiv:2503.14476, filters
    them out with "dynamic sampling").

    Args:
        rewards: [N] scalar reward per response.
        group_ids: [N] int64 group id per response (any values, any order).

    Returns:
        ``zero_std_group_share``: share of groups whose rewards are all equal; a group of size 1
        counts as one (it yields no signal either).
        ``mean_group_std``: mean over groups of the unbiased reward std, counting a group of size 1
        as std 0.
        Both are 0.0 for an empty batch.
    """
    m = _group_moments(rewards, group_ids)
    if m.count.numel() == 0:
        return {"zero_std_group_share": 0.0, "mean_group_std": 0.0}
    std = torch.where(m.constant, torch.zeros_like(m.std), m.std)
    return {
        "zero_std_group_share": m.constant.float().mean().item(),
        "mean_group_std": std.mean().item(),
    }
