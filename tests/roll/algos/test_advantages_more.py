"""RLOO, token rewards, return-to-go, REINFORCE++(-baseline), GAE, whitening, overlong penalty by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from roll.algos import (
    clip_advantages,
    compute_discounted_returns,
    compute_gae,
    compute_reinforce_pp_advantages,
    compute_reinforce_pp_baseline_advantages,
    compute_rloo_advantages,
    masked_whiten,
    overlong_penalty,
    token_rewards_from_sequence,
)

NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------------------------------------
# RLOO: A_i = r_i - mean of the other rewards in the group
# ---------------------------------------------------------------------------------------------
def test_rloo_binary_group():
    # r = 1, 0, 0, 1: r_0 - (0 + 0 + 1)/3 = 2/3; r_1 - (1 + 0 + 1)/3 = -2/3; symmetric for the rest
    out = compute_rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.int64))
    assert_close(out, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))


def test_rloo_interleaved_groups_singletons_and_constant():
    # group 5 (positions 0, 2, 4): 3 - (0 + 6)/2 = 0;  0 - (3 + 6)/2 = -4.5;  6 - (3 + 0)/2 = 4.5
    # group 8 (position 1): alone -> 0.   group 2 (positions 3, 5): 0.1, 0.1 constant -> exactly 0
    rewards = torch.tensor([3.0, 7.0, 0.0, 0.1, 6.0, 0.1])
    ids = torch.tensor([5, 8, 5, 2, 5, 2])
    out = compute_rloo_advantages(rewards, ids)
    assert_close(out, torch.tensor([0.0, 0.0, -4.5, 0.0, 4.5, 0.0]))
    assert torch.equal(out[[1, 3, 5]], torch.zeros(3))


def test_rloo_integer_rewards_and_pairs():
    # a pair: r_0 - r_1 and r_1 - r_0 -> 1, -1 (float32 from int64)
    out = compute_rloo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([1.0, -1.0]))
    assert compute_rloo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.int64)).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Token rewards: R on the last valid token, -kl_coef * kl on every valid token
# ---------------------------------------------------------------------------------------------
KL = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.4, NAN]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_token_rewards_from_sequence():
    # row 0: -0.5 * [0.1, 0.2, 0.3] = [-0.05, -0.1, -0.15], + reward 1 on t2 -> [-0.05, -0.1, 0.85]
    # row 1: -0.5 * [0.0, 0.4] = [0, -0.2], reward 0 on t1; padding (NaN kl) -> 0
    out = token_rewards_from_sequence(torch.tensor([1.0, 0.0]), MASK, KL, 0.5)
    assert_close(out, torch.tensor([[-0.05, -0.1, 0.85], [0.0, -0.2, 0.0]]))
    # no KL: reward on the rightmost valid token whatever the layout; an empty row stays 0
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    out = token_rewards_from_sequence(torch.tensor([2, 3, 4]), mask)
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([[0.0, 0.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="kl_coef"):
        token_rewards_from_sequence(torch.tensor([1.0, 0.0]), MASK, None, 0.1)


# ---------------------------------------------------------------------------------------------
# Return-to-go and REINFORCE++
# ---------------------------------------------------------------------------------------------
def test_discounted_returns():
    # token rewards row 0 [-0.05, -0.1, 0.85], row 1 [0, -0.2, pad]
    # gamma 1:   row 0 [0.7, 0.75, 0.85]; row 1 [-0.2, -0.2, 0]
    # gamma 0.5: row 0 t2 0.85, t1 -0.1 + 0.5 * 0.85 = 0.325, t0 -0.05 + 0.5 * 0.325 = 0.1125
    #            row 1 t1 -0.2, t0 0 + 0.5 * -0.2 = -0.1
    rewards = torch.tensor([[-0.05, -0.1, 0.85], [0.0, -0.2, 123.0]])
    assert_close(
        compute_discounted_returns(rewards, MASK), torch.tensor([[0.7, 0.75, 0.85], [-0.2, -0.2, 0.0]])
    )
    expected = torch.tensor([[0.1125, 0.325, 0.85], [-0.1, -0.2, 0.0]])
    assert_close(compute_discounted_returns(rewards, MASK, gamma=0.5), expected)


def test_discounted_returns_skip_masked_holes():
    # mask 1 0 1 (an observation token in the middle): t2 = 1, t1 masked -> 0, t0 = 0 + 0.5 * 1
    rewards = torch.tensor([[0.0, 50.0, 1.0]])
    out = compute_discounted_returns(rewards, torch.tensor([[1, 0, 1]]), gamma=0.5)
    assert_close(out, torch.tensor([[0.5, 0.0, 1.0]]))


def test_reinforce_pp_without_kl_eps_zero():
    # rewards 1, 0; row 0 has 3 tokens, row 1 one. gamma 1 returns: [1, 1, 1] and [0]
    # 4 valid tokens: mean 0.75, deviations 0.25 x3, -0.75; squares 3 * 0.0625 + 0.5625 = 0.75
    # unbiased var 0.75 / 3 = 0.25, std 0.5 -> [0.5, 0.5, 0.5] and [-1.5]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    out = compute_reinforce_pp_advantages(torch.tensor([1.0, 0.0]), mask, eps=0.0)
    assert_close(out, torch.tensor([[0.5, 0.5, 0.5], [-1.5, 0.0, 0.0]]))


def test_reinforce_pp_with_kl_returns_and_whitening():
    # returns (gamma 1, see test_discounted_returns): 0.7, 0.75, 0.85 | -0.2, -0.2
    # mean 1.9 / 5 = 0.38; deviations 0.32, 0.37, 0.47, -0.58, -0.58
    # squares 0.1024 + 0.1369 + 0.2209 + 0.3364 + 0.3364 = 1.133; unbiased var 1.133 / 4 = 0.28325
    # std sqrt(0.28325) = 0.5322124 -> 0.6012637, 0.6952112, 0.8831061, -1.0897905, -1.0897905
    out = compute_reinforce_pp_advantages(torch.tensor([1.0, 0.0]), MASK, kl=KL, kl_coef=0.5)
    expected = torch.tensor([[0.6012637, 0.6952112, 0.8831061], [-1.0897905, -1.0897905, 0.0]])
    assert_close(out, expected)
    assert_close(torch.tensor([0.32, 0.37, 0.47, -0.58]) / math.sqrt(0.28325 + 1e-8), expected.flatten()[:4])


def test_reinforce_pp_baseline():
    # rewards 1, 0 in group 7 -> centred 0.5, -0.5; reward 3 alone in group 9 -> 0
    # returns: row 0 [0.5, 0.5], row 1 [-0.5, pad], row 2 [0, 0]
    # 5 valid: mean 0.5 / 5 = 0.1; deviations 0.4, 0.4, -0.6, -0.1, -0.1
    # squares 0.16 + 0.16 + 0.36 + 0.01 + 0.01 = 0.7; var 0.7 / 4 = 0.175; std 0.4183300
    # -> 0.9561829, -1.4342743, -0.2390457
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    out = compute_reinforce_pp_baseline_advantages(
        torch.tensor([1.0, 0.0, 3.0]), torch.tensor([7, 7, 9]), mask
    )
    expected = torch.tensor([[0.9561829, 0.9561829], [-1.4342743, 0.0], [-0.2390457, -0.2390457]])
    assert_close(out, expected)


# ---------------------------------------------------------------------------------------------
# GAE, gamma 0.9, lam 0.8 (gamma * lam = 0.72)
# ---------------------------------------------------------------------------------------------
def test_gae_full_row_and_right_padded_row():
    # row 0, 3 tokens, r = [0, 0, 1], V = [0.5, 0.6, 0.7]:
    #   t2: delta = 1 + 0.9 * 0 - 0.7 = 0.3                 A2 = 0.3
    #   t1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03              A1 = 0.03 + 0.72 * 0.3   = 0.246
    #   t0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04              A0 = 0.04 + 0.72 * 0.246 = 0.21712
    #   returns A + V = [0.71712, 0.846, 1.0]
    # row 1, right-padded, r = [0, 2, pad], V = [0.4, 0.5, 9.0 (garbage, must not bootstrap)]:
    #   t1: delta = 2 + 0.9 * 0 - 0.5 = 1.5                 A1 = 1.5
    #   t0: delta = 0 + 0.9 * 0.5 - 0.4 = 0.05              A0 = 0.05 + 0.72 * 1.5 = 1.13
    #   returns [1.53, 2.0, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, NAN]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.4, 0.5, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3], [1.13, 1.5, 0.0]]))
    assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0], [1.53, 2.0, 0.0]]))
    assert not adv.requires_grad and not ret.requires_grad


def test_gae_skips_masked_hole_and_lambda_one_is_monte_carlo():
    # mask 1 0 1, r = [0, x, 1], V = [0.5, x, 0.7]: t2 A = 0.3; t1 skipped;
    # t0: delta = 0 + 0.9 * 0.7 - 0.5 = 0.13, A0 = 0.13 + 0.72 * 0.3 = 0.346
    rewards = torch.tensor([[0.0, 5.0, 1.0]])
    values = torch.tensor([[0.5, -3.0, 0.7]])
    adv, _ = compute_gae(rewards, values, torch.tensor([[1, 0, 1]]), gamma=0.9, lam=0.8)
    assert_close(adv, torch.tensor([[0.346, 0.0, 0.3]]))
    # gamma = lam = 1: A_t = (sum of rewards from t) - V_t = [1 - 0.5, 1 - 0.6, 1 - 0.7]
    adv, ret = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3))
    assert_close(adv, torch.tensor([[0.5, 0.4, 0.3]]))
    assert_close(ret, torch.ones(1, 3))


def test_gae_rejects_bad_discount():
    with pytest.raises(ValueError, match="gamma"):
        compute_gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), gamma=1.5)


# ---------------------------------------------------------------------------------------------
# Whitening and clipping
# ---------------------------------------------------------------------------------------------
def test_masked_whiten():
    # valid 1, 2, 3 (padding inf ignored): mean 2, deviations -1, 0, 1, unbiased var 2 / 2 = 1
    values = torch.tensor([[1.0, 2.0], [3.0, INF]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert_close(masked_whiten(values, mask, eps=0.0), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    # shift_mean=False adds the mean back: -1 + 2, 0 + 2, 1 + 2
    assert_close(
        masked_whiten(values, mask, shift_mean=False, eps=0.0), torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    )
    # default eps 1e-8 under the square root: 1 / sqrt(1 + 1e-8)
    assert_close(masked_whiten(values, mask)[1, 0], torch.tensor(1 / math.sqrt(1 + 1e-8)))
    # one valid value: no variance -> 0; nothing valid -> all 0, never NaN
    assert torch.equal(masked_whiten(values, torch.tensor([[0, 1], [0, 0]])), torch.zeros(2, 2))
    assert torch.equal(masked_whiten(values, torch.zeros(2, 2)), torch.zeros(2, 2))


def test_clip_advantages():
    adv = torch.tensor([-3.0, -0.5, 0.0, 2.0])
    assert clip_advantages(adv, None) is adv
    assert_close(clip_advantages(adv, 1.0), torch.tensor([-1.0, -0.5, 0.0, 1.0]))
    with pytest.raises(ValueError, match="max_abs"):
        clip_advantages(adv, 0.0)


# ---------------------------------------------------------------------------------------------
# DAPO overlong penalty, max_len 10, buffer 4: soft limit at 10 - 4 = 6
# ---------------------------------------------------------------------------------------------
def test_overlong_penalty_four_regions():
    # len 5 (below), 6 (at the soft limit): 0
    # len 8 (in the ramp): (6 - 8) / 4 = -0.5;  len 10 (at max): (6 - 10) / 4 = -1
    # len 12, 100 (beyond max): -1
    lengths = torch.tensor([5, 6, 8, 10, 12, 100])
    out = overlong_penalty(lengths, max_len=10, buffer_len=4, penalty=1.0)
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0, -1.0]))
    # penalty 0.5 scales every region: len 7 -> 0.5 * (6 - 7) / 4 = -0.125; len 11 -> -0.5
    out = overlong_penalty(torch.tensor([7.0, 11.0]), max_len=10, buffer_len=4, penalty=0.5)
    assert_close(out, torch.tensor([-0.125, -0.5]))


def test_overlong_penalty_rejects_bad_config():
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(torch.tensor([1]), max_len=4, buffer_len=5, penalty=1.0)
    with pytest.raises(ValueError, match="penalty"):
        overlong_penalty(torch.tensor([1]), max_len=4, buffer_len=2, penalty=-1.0)
