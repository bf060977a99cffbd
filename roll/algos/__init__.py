"""Pure tensor math for RL on language models: advantages, KL estimators and controllers, losses.

No Ray, no I/O: tensors in, tensors out. Each function documents its shapes and the paper equation
it implements, and is unit-tested on CPU against hand-computed values (tests/roll/algos/).

- ``advantages``: group advantages (GRPO, Dr. GRPO, RLOO) and their broadcast over tokens.
- ``token_advantages``: return-to-go, REINFORCE++(-baseline), GAE, masked whitening.
- ``reward_shaping``: token rewards with a KL penalty, DAPO's overlong penalty.
- ``aggregation``: masked means and the loss aggregation modes.
- ``policy_loss``: PPO clip (+ dual clip), ``compute_actor_loss`` / ``ActorLossParams``, GRPO loss.
- ``gspo``: the GSPO sequence-ratio loss. ``value_loss``: PPO's clipped critic loss.
- ``entropy``: chunked per-token entropy. ``kl`` / ``kl_control``: KL estimators and beta control.
- ``registry``: named algorithms (``ALGORITHMS``) and ``compute_advantages`` by name.
"""

from roll.algos.advantages import (
    broadcast_to_tokens,
    compute_grpo_advantages,
    compute_rloo_advantages,
    group_reward_stats,
)
from roll.algos.aggregation import LossAgg, aggregate_loss, masked_mean
from roll.algos.entropy import entropy_from_logits
from roll.algos.gspo import gspo_policy_loss
from roll.algos.kl import KLKind, kl_penalty
from roll.algos.kl_control import AdaptiveKLController, FixedKLController
from roll.algos.policy_loss import (
    ActorLossParams,
    PolicyLossName,
    compute_actor_loss,
    grpo_loss,
    ppo_clip_policy_loss,
)
from roll.algos.registry import (
    ALGORITHMS,
    AdvantageEstimator,
    AlgorithmSpec,
    compute_advantages,
    get_algorithm,
)
from roll.algos.reward_shaping import overlong_penalty, token_rewards_from_sequence
from roll.algos.token_advantages import (
    clip_advantages,
    compute_discounted_returns,
    compute_gae,
    compute_reinforce_pp_advantages,
    compute_reinforce_pp_baseline_advantages,
    masked_whiten,
)
from roll.algos.value_loss import explained_variance, value_loss

__all__ = [
    "ALGORITHMS",
    "ActorLossParams",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "AlgorithmSpec",
    "FixedKLController",
    "KLKind",
    "LossAgg",
    "PolicyLossName",
    "aggregate_loss",
    "broadcast_to_tokens",
    "clip_advantages",
    "compute_actor_loss",
    "compute_advantages",
    "compute_discounted_returns",
    "compute_gae",
    "compute_grpo_advantages",
    "compute_reinforce_pp_advantages",
    "compute_reinforce_pp_baseline_advantages",
    "compute_rloo_advantages",
    "entropy_from_logits",
    "explained_variance",
    "get_algorithm",
    "group_reward_stats",
    "grpo_loss",
    "gspo_policy_loss",
    "kl_penalty",
    "masked_mean",
    "masked_whiten",
    "overlong_penalty",
    "ppo_clip_policy_loss",
    "token_rewards_from_sequence",
    "value_loss",
]
