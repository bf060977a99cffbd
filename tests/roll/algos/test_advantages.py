"""GRPO advantages, token broadcast and group stats against hand-computed values."""

import math

import pytest
import torch
from torch.testing import assert_close

from roll.algos import broadcast_to_tokens, compute_grpo_advantages, group_reward_stats


def test_one_group_uses_unbiased_std_plus_eps():
    # rewards 1, 2, 3, 4: mean 2.5, deviations -1.5, -0.5, 0.5, 1.5
    # sum of squares 2.25 + 0.25 + 0.25 + 2.25 = 5; unbiased var 5 / 3; std sqrt(5/3) = 1.2909944
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ids = torch.zeros(4, dtype=torch.int64)
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (math.sqrt(5 / 3) + 1e-6)
    assert_close(compute_grpo_advantages(rewards, ids), expected)
    assert_close(expected[3], torch.tensor(1.5 / 1.2909954), rtol=1e-6, atol=0)


def test_binary_rewards_eps_zero():
    # rewards 1, 0, 0, 0: mean 0.25, deviations 0.75, -0.25, -0.25, -0.25
    # sum of squares 0.5625 + 3 * 0.0625 = 0.75; unbiased var 0.75 / 3 = 0.25; std 0.5
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    ids = torch.zeros(4, dtype=torch.int64)
    assert_close(compute_grpo_advantages(rewards, ids, eps=0.0), torch.tensor([1.5, -0.5, -0.5, -0.5]))


def test_interleaved_non_contiguous_group_ids():
    # group 7 at positions 0, 2, 4, 6 has rewards 1, 0, 0, 0 -> 1.5, -0.5, -0.5, -0.5 (see above)
    # group 3 at positions 1, 3, 5, 7 has rewards 0, 1, 1, 1: mean 0.75, deviations -0.75, 0.25 x3,
    # sum of squares 0.5625 + 3 * 0.0625 = 0.75, var 0.25, std 0.5 -> -1.5, 0.5, 0.5, 0.5
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    ids = torch.tensor([7, 3, 7, 3, 7, 3, 7, 3])
    expected = torch.tensor([1.5, -1.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5])
    assert_close(compute_grpo_advantages(rewards, ids, eps=0.0), expected)


def test_group_of_size_one_gets_zero():
    # group 0: rewards 1, 3: mean 2, deviations -1, 1, unbiased var (1 + 1) / 1 = 2, std sqrt(2)
    #   -> -1/sqrt(2), 1/sqrt(2) = -0.7071068, 0.7071068
    # group 1: a single reward 5 -> 0 (torch.std would be NaN)
    rewards = torch.tensor([1.0, 5.0, 3.0])
    ids = torch.tensor([0, 1, 0])
    out = compute_grpo_advantages(rewards, ids, eps=0.0)
    assert_close(out, torch.tensor([-0.7071068, 0.0, 0.7071068]))
    assert out[1].item() == 0.0


@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_all_equal_rewards_give_exact_zero(eps):
    # 0.1 * 3 / 3 rounds away from 0.1 in float32, so this needs the exact "constant group" check
    rewards = torch.tensor([0.1, 0.1, 0.1, 2.0, 4.0])
    ids = torch.tensor([0, 0, 0, 1, 1])
    out = compute_grpo_advantages(rewards, ids, eps=eps)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:3], torch.zeros(3))
    # group 1: mean 3, deviations -1, 1, var 2 / 1 = 2, std sqrt(2)
    assert_close(out[3:], torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + eps))


def test_no_std_normalisation_is_dr_grpo():
    # group 0: 1, 2, 3, 4 -> mean 2.5 -> -1.5, -0.5, 0.5, 1.5; group 9: one reward -> 0
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    ids = torch.tensor([0, 0, 0, 0, 9])
    out = compute_grpo_advantages(rewards, ids, norm_by_std=False)
    assert_close(out, torch.tensor([-1.5, -0.5, 0.5, 1.5, 0.0]))


def test_integer_rewards_and_empty_batch():
    # integer rewards 1, 0 in one group: mean 0.5, deviations 0.5, -0.5, var 0.5 / 1, std 0.7071068
    out = compute_grpo_advantages(torch.tensor([1, 0]), torch.tensor([4, 4]), eps=0.0)
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([0.7071068, -0.7071068]))
    empty = compute_grpo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert empty.shape == (0,)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        compute_grpo_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="1-D"):
        compute_grpo_advantages(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        compute_grpo_advantages(torch.zeros(3), torch.zeros(3))


def test_broadcast_to_tokens():
    # row 0 value 2 on its first two tokens, row 1 value -1 on its last two
    values = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    expected = torch.tensor([[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]])
    assert_close(broadcast_to_tokens(values, mask), expected)
    assert_close(broadcast_to_tokens(values, mask.bool()), expected)
    with pytest.raises(ValueError, match="sequences"):
        broadcast_to_tokens(values, torch.ones(3, 3))


def test_group_reward_stats():
    # group 0: 1, 1 -> std 0 (zero-std); group 1: 0, 2 -> mean 1, var (1 + 1) / 1 = 2, std sqrt(2)
    # group 2: single reward -> std 0, counts as zero-std
    # zero_std_group_share = 2 / 3; mean_group_std = (0 + sqrt(2) + 0) / 3 = 0.4714045
    rewards = torch.tensor([1.0, 0.0, 1.0, 2.0, 5.0])
    ids = torch.tensor([0, 1, 0, 1, 2])
    stats = group_reward_stats(rewards, ids)
    assert set(stats) == {"zero_std_group_share", "mean_group_std"}
    assert all(isinstance(v, float) for v in stats.values())
    assert stats["zero_std_group_share"] == pytest.approx(2 / 3)
    assert stats["mean_group_std"] == pytest.approx(0.4714045, rel=1e-6)
