"""The algorithm registry: each spec's defaults and compute_advantages' dispatch, by hand."""

import pytest
import torch
from torch.testing import assert_close

from roll.algos import (
    ALGORITHMS,
    compute_advantages,
    compute_reinforce_pp_advantages,
    compute_reinforce_pp_baseline_advantages,
    get_algorithm,
    masked_whiten,
)

NAN = float("nan")


def test_every_named_algorithm_is_registered():
    names = ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gspo", "dapo", "ppo"]
    assert sorted(ALGORITHMS) == sorted(names)
    assert all(spec.name == name for name, spec in ALGORITHMS.items())
    estimators = {name: spec.advantage_estimator for name, spec in ALGORITHMS.items()}
    assert estimators == {
        "grpo": "grpo",
        "dr_grpo": "grpo_no_std",
        "rloo": "rloo",
        "reinforce_pp": "reinforce_pp",
        "reinforce_pp_baseline": "reinforce_pp_baseline",
        "gspo": "grpo",
        "dapo": "grpo",
        "ppo": "gae",
    }
    assert [name for name, spec in ALGORITHMS.items() if spec.needs_critic] == ["ppo"]
    assert {name for name, spec in ALGORITHMS.items() if spec.kl_in_reward} == {"rloo", "reinforce_pp", "ppo"}


def test_paper_defaults():
    dapo = ALGORITHMS["dapo"]
    assert (dapo.agg, dapo.clip_eps_low, dapo.clip_eps_high, dapo.needs_reference) == (
        "token-mean",
        0.2,
        0.28,
        False,
    )
    assert ALGORITHMS["dr_grpo"].agg == "seq-mean-token-sum-norm"
    assert ALGORITHMS["grpo"].agg == "token-mean" and ALGORITHMS["grpo"].needs_reference
    gspo = ALGORITHMS["gspo"]
    assert (gspo.loss, gspo.clip_eps_low, gspo.clip_eps_high) == ("gspo", 3e-4, 4e-4)
    assert ALGORITHMS["reinforce_pp_baseline"].kl_kind == "k2"


def test_actor_loss_params_from_spec():
    cfg = ALGORITHMS["dapo"].actor_loss_params(kl_coef=0.0)
    assert (cfg.loss, cfg.clip_eps_high, cfg.agg, cfg.use_kl_loss) == ("ppo", 0.28, "token-mean", True)
    # KL in the reward -> not in the loss
    assert ALGORITHMS["ppo"].actor_loss_params().use_kl_loss is False
    assert ALGORITHMS["gspo"].actor_loss_params().loss == "gspo"
    # Dr. GRPO's constant divisor must be given
    with pytest.raises(ValueError, match="norm_len"):
        ALGORITHMS["dr_grpo"].actor_loss_params()
    assert ALGORITHMS["dr_grpo"].actor_loss_params(norm_len=4096).norm_len == 4096
    with pytest.raises(ValueError, match="unknown actor loss fields"):
        ALGORITHMS["grpo"].actor_loss_params(beta=0.1)
    with pytest.raises(ValueError, match="grpo"):
        get_algorithm("grpoo")


# One group of 4 responses with rewards 1, 0, 0, 0; response lengths 2, 1, 2, 1 (T = 2)
REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0])
GROUPS = torch.tensor([3, 3, 3, 3])
MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]])


@pytest.mark.parametrize(
    ("name", "per_sequence"),
    [
        # GRPO: mean 0.25, unbiased std 0.5 (see test_advantages.py) -> 1.5, -0.5, -0.5, -0.5
        ("grpo", [1.5, -0.5, -0.5, -0.5]),
        ("dapo", [1.5, -0.5, -0.5, -0.5]),
        ("gspo", [1.5, -0.5, -0.5, -0.5]),
        # Dr. GRPO: r - mean = 0.75, -0.25, -0.25, -0.25
        ("dr_grpo", [0.75, -0.25, -0.25, -0.25]),
        # RLOO: 1 - 0 = 1; 0 - (1 + 0 + 0) / 3 = -1/3
        ("rloo", [1.0, -1 / 3, -1 / 3, -1 / 3]),
    ],
)
def test_outcome_estimators_broadcast_over_tokens(name, per_sequence):
    adv, returns = compute_advantages(name, rewards=REWARDS, group_ids=GROUPS, response_mask=MASK)
    assert returns is None
    assert_close(adv, torch.tensor(per_sequence)[:, None] * MASK, rtol=1e-5, atol=1e-5)


def test_grpo_norm_by_std_false_is_dr_grpo():
    adv, _ = compute_advantages(
        "grpo", rewards=REWARDS, group_ids=GROUPS, response_mask=MASK, norm_by_std=False
    )
    dr, _ = compute_advantages("dr_grpo", rewards=REWARDS, group_ids=GROUPS, response_mask=MASK)
    assert torch.equal(adv, dr)


def test_rloo_with_kl_in_reward():
    # rewards 1, 0 in one group; per-token KL summed over valid tokens: 0.1 + 0.3 = 0.4, 0.2
    # shaped rewards 1 - 0.5 * 0.4 = 0.8, 0 - 0.5 * 0.2 = -0.1; RLOO pair: 0.9, -0.9
    kl = torch.tensor([[0.1, 0.3], [0.2, NAN]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv, _ = compute_advantages(
        "rloo",
        rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
        response_mask=mask,
        kl=kl,
        kl_coef=0.5,
    )
    assert_close(adv, torch.tensor([[0.9, 0.9], [-0.9, 0.0]]))


def test_reinforce_pp_dispatch():
    kl = torch.tensor([[0.1, 0.3], [0.2, NAN], [0.0, 0.1], [0.4, NAN]])
    adv, returns = compute_advantages(
        "reinforce_pp", rewards=REWARDS, response_mask=MASK, kl=kl, kl_coef=0.1, gamma=0.9
    )
    assert returns is None
    assert torch.equal(adv, compute_reinforce_pp_advantages(REWARDS, MASK, kl=kl, kl_coef=0.1, gamma=0.9))
    adv, _ = compute_advantages(
        "reinforce_pp_baseline", rewards=REWARDS, group_ids=GROUPS, response_mask=MASK
    )
    assert torch.equal(adv, compute_reinforce_pp_baseline_advantages(REWARDS, GROUPS, MASK))


def test_ppo_gae_returns_and_whitened_advantages():
    # token rewards: reward on the last valid token; the GAE example of test_advantages_more.py:
    #   row 0 r = [0, 0, 1], V = [0.5, 0.6, 0.7] -> A = [0.21712, 0.246, 0.3], R = [0.71712, 0.846, 1]
    #   row 1 r = [0, 2, pad], V = [0.4, 0.5, pad] -> A = [1.13, 1.5, 0], R = [1.53, 2.0, 0]
    values = torch.tensor([[0.5, 0.6, 0.7], [0.4, 0.5, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, returns = compute_advantages(
        "ppo", rewards=torch.tensor([1.0, 2.0]), response_mask=mask, values=values, gamma=0.9, lam=0.8
    )
    assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0], [1.53, 2.0, 0.0]]))
    raw = torch.tensor([[0.21712, 0.246, 0.3], [1.13, 1.5, 0.0]])
    assert_close(adv, masked_whiten(raw, mask))


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("grpo", {"group_ids": GROUPS, "kl": torch.zeros(4, 2), "kl_coef": 0.1}, "in the loss"),
        ("grpo", {}, "group_ids"),
        ("reinforce_pp_baseline", {}, "group_ids"),
        ("grpo", {"group_ids": GROUPS, "values": torch.zeros(4, 2)}, "values"),
        ("ppo", {}, "values"),
        ("rloo", {"group_ids": GROUPS, "kl_coef": 0.1}, "kl"),
        ("sac", {}, "unknown algorithm"),
    ],
)
def test_compute_advantages_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_advantages(name, rewards=REWARDS, response_mask=MASK, **kwargs)
