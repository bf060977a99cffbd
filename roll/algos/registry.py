"""Named RL algorithms: which advantage estimator, loss and defaults each one uses.

A YAML names an algorithm (``algorithm: dapo``); ``ALGORITHMS[name]`` says how to train it, and
``compute_advantages(name, ...)`` computes its token-level advantages. The defaults follow each
paper's recipe; every one of them can be overridden through ``AlgorithmSpec.actor_loss_params``.

==========================  =======================  ======  ========================  ==========
name                        advantage estimator      loss    aggregation               KL goes in
==========================  =======================  ======  ========================  ==========
grpo                        grpo                     ppo     token-mean                loss (k3)
dr_grpo                     grpo_no_std              ppo     seq-mean-token-sum-norm   (no ref)
rloo                        rloo                     ppo     token-mean                reward (k1)
reinforce_pp                reinforce_pp             ppo     token-mean                reward (k1)
reinforce_pp_baseline       reinforce_pp_baseline    ppo     token-mean                loss (k2)
gspo                        grpo                     gspo    seq-mean-token-mean       (no ref)
dapo                        grpo                     ppo     token-mean, eps_high .28  (no ref)
ppo                         gae (+ critic)           ppo     token-mean                reward (k1)
==========================  =======================  ======  ========================  ==========

- GRPO: DeepSeekMath, Shao et al., 2024, https://arxiv.org/abs/2402.03300 (sec. 4.1). Token-mean
  aggregation as in verl's default, instead of the paper's per-sequence mean.
- Dr. GRPO: Liu et al., 2025, https://arxiv.org/abs/2503.20783 (sec. 3.1): no std division in the
  advantage, token sums divided by a constant length (set ``norm_len``), no KL term.
- RLOO: Ahmadian et al., 2024, https://arxiv.org/abs/2402.14740: leave-one-out baseline; the KL
  penalty is summed over the response and subtracted from its reward.
- REINFORCE++: Hu, 2025, https://arxiv.org/abs/2501.03262: token KL penalty in the reward,
  return-to-go, global batch normalisation.
- REINFORCE++-baseline: same paper; group-mean baseline, then the same normalisation. KL as a
  k2 loss term, as OpenRLHF's recipes for ``reinforce_baseline`` run it.
- GSPO: Zheng et al., 2025, https://arxiv.org/abs/2507.18071: sequence-level ratio and clip
  (3e-4 / 4e-4), GRPO advantages.
- DAPO: Yu et al., 2025, https://arxiv.org/abs/2503.14476: clip-higher (0.2 / 0.28), token-mean
  loss, no KL. Its dynamic sampling and overlong shaping (``roll.algos.reward_shaping``) are
  pipeline steps, not part of this spec.
- PPO-RLHF: Schulman et al., 2017, https://arxiv.org/abs/1707.06347 with GAE (Schulman et al.,
  2015, https://arxiv.org/abs/1506.02438) and the per-token KL reward of Ziegler et al., 2019,
  https://arxiv.org/abs/1909.08593; advantages whitened over the batch. Needs a critic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from roll.algos.advantages import broadcast_to_tokens, compute_grpo_advantages, compute_rloo_advantages
from roll.algos.aggregation import LossAgg
from roll.algos.kl import KLKind
from roll.algos.policy_loss import ActorLossParams, PolicyLossName
from roll.algos.reward_shaping import token_rewards_from_sequence
from roll.algos.token_advantages import (
    compute_gae,
    compute_reinforce_pp_advantages,
    compute_reinforce_pp_baseline_advantages,
    masked_whiten,
)

__all__ = ["ALGORITHMS", "AdvantageEstimator", "AlgorithmSpec", "compute_advantages", "get_algorithm"]

AdvantageEstimator = Literal["grpo", "grpo_no_std", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"]

_GROUP_ESTIMATORS = ("grpo", "grpo_no_std", "rloo", "reinforce_pp_baseline")


@dataclass(frozen=True)
class AlgorithmSpec:
    """How one named algorithm trains.

    Attributes:
        name: the key in ``ALGORITHMS``.
        advantage_estimator: ``"grpo"`` (group mean/std), ``"grpo_no_std"`` (group mean only),
            ``"rloo"`` (leave-one-out), ``"reinforce_pp"`` (batch-whitened return-to-go),
            ``"reinforce_pp_baseline"`` (group mean, then as reinforce_pp) or ``"gae"`` (critic).
        loss: default policy loss, ``"ppo"`` or ``"gspo"``.
        agg: default loss aggregation.
        clip_eps_low, clip_eps_high: default ratio clip bounds ``1 - low``, ``1 + high``.
        needs_critic: trains a value model (only GAE needs one).
        needs_reference: the default recipe penalises KL to a frozen reference policy, so a
            reference model must compute ``ref_logp``.
        kl_in_reward: the KL penalty is subtracted from the rewards before the advantages
            (``compute_advantages(kl=..., kl_coef=...)``); False puts it in the loss
            (``ActorLossParams.use_kl_loss``).
        kl_kind: default KL estimator (``roll.algos.kl``).
    """

    name: str
    advantage_estimator: AdvantageEstimator
    loss: PolicyLossName
    agg: LossAgg
    clip_eps_low: float
    clip_eps_high: float
    needs_critic: bool
    needs_reference: bool
    kl_in_reward: bool
    kl_kind: KLKind

    def actor_loss_params(self, **overrides: Any) -> ActorLossParams:
        """This algorithm's ``ActorLossParams`` with ``overrides`` (any of its fields) applied.

        Example: ``ALGORITHMS["dr_grpo"].actor_loss_params(norm_len=4096)``.
        """
        names = {f.name for f in dataclasses.fields(ActorLossParams)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown actor loss fields {unknown}; use some of {sorted(names)}")
        params = {
            "loss": self.loss,
            "clip_eps_low": self.clip_eps_low,
            "clip_eps_high": self.clip_eps_high,
            "agg": self.agg,
            "kl_kind": self.kl_kind,
            "use_kl_loss": not self.kl_in_reward,
        }
        params.update(overrides)
        return ActorLossParams(**params)


def _spec(name: str, estimator: AdvantageEstimator, **kwargs: Any) -> AlgorithmSpec:
    defaults: dict[str, Any] = {
        "loss": "ppo",
        "agg": "token-mean",
        "clip_eps_low": 0.2,
        "clip_eps_high": 0.2,
        "needs_critic": False,
        "needs_reference": True,
        "kl_in_reward": False,
        "kl_kind": "k3",
    }
    return AlgorithmSpec(name=name, advantage_estimator=estimator, **{**defaults, **kwargs})


ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        _spec("grpo", "grpo"),
        _spec("dr_grpo", "grpo_no_std", agg="seq-mean-token-sum-norm", needs_reference=False),
        _spec("rloo", "rloo", kl_in_reward=True, kl_kind="k1"),
        _spec("reinforce_pp", "reinforce_pp", kl_in_reward=True, kl_kind="k1"),
        _spec("reinforce_pp_baseline", "reinforce_pp_baseline", kl_kind="k2"),
        _spec(
            "gspo",
            "grpo",
            loss="gspo",
            agg="seq-mean-token-mean",
            clip_eps_low=3e-4,
            clip_eps_high=4e-4,
            needs_reference=False,
        ),
        _spec("dapo", "grpo", clip_eps_high=0.28, needs_reference=False),
        _spec("ppo", "gae", needs_critic=True, kl_in_reward=True, kl_kind="k1"),
    )
}


def get_algorithm(name: str) -> AlgorithmSpec:
    """``ALGORITHMS[name]``, with an error that lists the valid names."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; set it to one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def _sequence_kl(kl: Tensor | None, response_mask: Tensor) -> Tensor:
    """[B] sum of the per-token KL over each response's valid tokens."""
    if kl is None or kl.shape != response_mask.shape:
        shape = None if kl is None else tuple(kl.shape)
        raise ValueError(f"a KL penalty in the reward needs kl [B, T] like response_mask, got {shape}")
    valid = response_mask.bool()
    return torch.where(valid, kl.detach(), torch.zeros_like(kl)).sum(-1)


def compute_advantages(
    spec_name: str,
    *,
    rewards: Tensor,
    group_ids: Tensor | None = None,
    response_mask: Tensor,
    values: Tensor | None = None,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    lam: float = 1.0,
    norm_by_std: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Token-level advantages of algorithm ``spec_name`` (and returns, for the critic of ``ppo``).

    - ``grpo`` / ``grpo_no_std`` / ``rloo``: one advantage per response from its group, spread
      over its tokens. With a KL in the reward (rloo), the response's reward is first reduced by
      ``kl_coef * sum_t kl_t`` over its valid tokens.
    - ``reinforce_pp`` / ``reinforce_pp_baseline``: ``roll.algos.token_advantages``.
    - ``gae``: token rewards (reward on the last token, ``- kl_coef * kl`` per token), GAE with
      ``gamma`` and ``lam``, advantages whitened over the batch; returns are not whitened.

    Args:
        spec_name: a key of ``ALGORITHMS``.
        rewards: [B] scalar reward per response.
        group_ids: [B] int64 prompt-group ids; required by the group estimators (grpo,
            grpo_no_std, rloo, reinforce_pp_baseline), ignored by the others.
        response_mask: [B, T] 0/1 or bool, 1 on response tokens.
        values: [B, T] critic values; required by ``gae`` and rejected otherwise.
        kl: [B, T] per-token KL estimate to the reference, for algorithms with
            ``kl_in_reward``; None otherwise.
        kl_coef: weight of that KL penalty; must be 0 for algorithms that put the KL in the loss
            (set ``ActorLossParams.kl_coef`` instead).
        gamma, lam: discount and GAE lambda (token estimators; outcome estimators ignore them).
        norm_by_std: divide by the group std for the ``grpo`` estimator (``grpo_no_std`` never
            does).

    Returns:
        ``(advantages, returns)``: [B, T] float advantages, 0 at masked positions, detached;
        ``returns`` [B, T] for ``gae`` (the critic's targets), else None.
    """
    spec = get_algorithm(spec_name)
    estimator = spec.advantage_estimator
    if kl_coef != 0 and not spec.kl_in_reward:
        raise ValueError(
            f"{spec_name!r} puts the KL penalty in the loss, not the reward; call compute_advantages "
            "with kl_coef=0 and set ActorLossParams.kl_coef"
        )
    if estimator in _GROUP_ESTIMATORS and group_ids is None:
        raise ValueError(f"{spec_name!r} compares responses within prompt groups; pass group_ids [B]")
    if (values is None) == (estimator == "gae"):
        raise ValueError(
            f"values must be given for the critic-based 'ppo' and only for it (algorithm {spec_name!r})"
        )

    if estimator in ("grpo", "grpo_no_std", "rloo"):
        if kl_coef != 0:
            rewards = rewards - kl_coef * _sequence_kl(kl, response_mask)
        if estimator == "rloo":
            seq_adv = compute_rloo_advantages(rewards.detach(), group_ids)
        else:
            seq_adv = compute_grpo_advantages(
                rewards.detach(), group_ids, norm_by_std=norm_by_std and estimator == "grpo"
            )
        return broadcast_to_tokens(seq_adv, response_mask), None
    if estimator == "reinforce_pp":
        return compute_reinforce_pp_advantages(
            rewards, response_mask, kl=kl, kl_coef=kl_coef, gamma=gamma
        ), None
    if estimator == "reinforce_pp_baseline":
        adv = compute_reinforce_pp_baseline_advantages(
            rewards, group_ids, response_mask, kl=kl, kl_coef=kl_coef, gamma=gamma
        )
        return adv, None
    token_rewards = token_rewards_from_sequence(rewards, response_mask, kl, kl_coef)
    advantages, returns = compute_gae(token_rewards, values, response_mask, gamma=gamma, lam=lam)
    return masked_whiten(advantages, response_mask), returns
