"""Pure tensor math for RL on language models: advantages, KL estimators, policy losses.

No Ray, no I/O: tensors in, tensors out. Each function documents its shapes and the paper equation
it implements, and is unit-tested on CPU against hand-computed values (tests/roll/algos/).
"""

from roll.algos.advantages import broadcast_to_tokens, compute_grpo_advantages, group_reward_stats
from roll.algos.kl import KLKind, kl_penalty
from roll.algos.policy_loss import (
    LossAgg,
    aggregate_loss,
    grpo_loss,
    masked_mean,
    ppo_clip_policy_loss,
)

__all__ = [
    "KLKind",
    "LossAgg",
    "aggregate_loss",
    "broadcast_to_tokens",
    "compute_grpo_advantages",
    "group_reward_stats",
    "grpo_loss",
    "kl_penalty",
    "masked_mean",
    "ppo_clip_policy_loss",
]
