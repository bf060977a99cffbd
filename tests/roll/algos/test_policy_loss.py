"""Loss aggregation, PPO clip loss and GRPO loss against hand-computed values and gradients."""

import math

import pytest
import torch
from torch.testing import assert_close

from roll.algos import aggregate_loss, grpo_loss, masked_mean, ppo_clip_policy_loss

INF, NAN = float("inf"), float("nan")

# ---------------------------------------------------------------------------------------------
# aggregate_loss / masked_mean
# Row 0 has 3 valid tokens, row 1 one, row 2 none. Masked slots hold inf/NaN: they must not leak.
# ---------------------------------------------------------------------------------------------
VALUES = [[1.0, 2.0, 3.0], [4.0, INF, NAN], [NAN, NAN, NAN]]
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    ("mode", "expected", "grad_row0", "grad_row1"),
    [
        # (1 + 2 + 3 + 4) / 4 tokens = 2.5; every valid token's gradient is 1/4
        ("token-mean", 2.5, 1 / 4, 1 / 4),
        # row means 6/3 = 2 and 4/1 = 4; row 2 is empty and skipped: (2 + 4) / 2 = 3
        # gradient: row 0 token 1/(3*2) = 1/6, row 1 token 1/(1*2) = 1/2
        ("seq-mean-token-mean", 3.0, 1 / 6, 1 / 2),
        # row sums 6, 4, 0 over all 3 rows: 10/3 = 3.3333333; every valid token's gradient is 1/3
        ("seq-mean-token-sum", 10 / 3, 1 / 3, 1 / 3),
    ],
)
def test_aggregate_loss_modes(mode, expected, grad_row0, grad_row1):
    values = torch.tensor(VALUES, requires_grad=True)
    out = aggregate_loss(values, MASK, mode)
    assert out.dim() == 0
    assert_close(out, torch.tensor(expected))
    out.backward()
    expected_grad = torch.tensor(
        [[grad_row0] * 3, [grad_row1, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float32
    )
    assert_close(values.grad, expected_grad)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_aggregate_loss_all_masked_is_zero_not_nan(mode):
    values = torch.tensor(VALUES, requires_grad=True)
    out = aggregate_loss(values, torch.zeros(3, 3), mode)
    assert torch.equal(out.detach(), torch.tensor(0.0))
    out.backward()
    assert torch.equal(values.grad, torch.zeros(3, 3))


def test_aggregate_loss_rejects_unknown_mode_and_shapes():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(torch.ones(2, 2), torch.ones(2, 2), "sum")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        aggregate_loss(torch.ones(2, 2), torch.ones(2, 3), "token-mean")


def test_masked_mean():
    values = torch.tensor(VALUES)
    # all valid tokens: (1 + 2 + 3 + 4) / 4 = 2.5; per row: 6/3 = 2, 4/1 = 4, empty -> 0
    assert_close(masked_mean(values, MASK), torch.tensor(2.5))
    assert_close(masked_mean(values, MASK, dim=-1), torch.tensor([2.0, 4.0, 0.0]))
    assert_close(masked_mean(values, torch.zeros(3, 3)), torch.tensor(0.0))


# ---------------------------------------------------------------------------------------------
# PPO clip loss. Six valid tokens, eps_low = eps_high = 0.2, so ratios are clipped to [0.8, 1.2]:
#   token  A   ratio  -A*ratio  -A*clip(ratio)  loss = max   clip active?  dloss/dlogp * N
#   t0    +1   1.5    -1.5      -1.2            -1.2         yes           0
#   t1    -1   0.5     0.5       0.8             0.8         yes           0
#   t2    +2   1.1    -2.2      -2.2            -2.2         no            -A*ratio = -2.2
#   t3    -1   0.9     0.9       0.9             0.9         no (equal)    -A*ratio =  0.9
#   t4    +1   0.5    -0.5      -0.8            -0.5         no            -A*ratio = -0.5
#   t5    -1   1.5     1.5       1.2             1.5         no            -A*ratio =  1.5
# Layout [B=2, T=4]: row 0 = t0 t1 pad pad, row 1 = t2 t3 t4 t5. Padding holds logp 100 and
# old_logp -100 (exp(200) overflows float32 to inf) and must change nothing.
# ---------------------------------------------------------------------------------------------
A = torch.tensor([[1.0, -1.0, 0.0, 0.0], [2.0, -1.0, 1.0, -1.0]])
RATIO = torch.tensor([[1.5, 0.5, 1.0, 1.0], [1.1, 0.9, 0.5, 1.5]])
PPO_MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
PAD = PPO_MASK == 0
# -A*ratio on unclipped tokens, 0 on clipped ones and padding
UNCLIPPED_GRAD = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-2.2, 0.9, -0.5, 1.5]])


def _inputs():
    old_logp = torch.full((2, 4), -1.0).masked_fill(PAD, -100.0)
    logp = (old_logp + torch.log(RATIO)).masked_fill(PAD, 100.0).requires_grad_()
    return logp, old_logp.requires_grad_(), A.clone().requires_grad_()


@pytest.mark.parametrize(
    ("agg", "expected", "grad_scale"),
    [
        # (-1.2 + 0.8 - 2.2 + 0.9 - 0.5 + 1.5) / 6 = -0.7 / 6 = -0.1166667; gradient / N = 6
        ("token-mean", -0.7 / 6, [1 / 6, 1 / 6]),
        # row 0: (-1.2 + 0.8) / 2 = -0.2; row 1: (-2.2 + 0.9 - 0.5 + 1.5) / 4 = -0.075
        # mean -0.1375; a row-1 token's gradient is scaled by 1 / (4 tokens * 2 rows) = 1/8
        ("seq-mean-token-mean", -0.1375, [1 / 4, 1 / 8]),
        # row sums -0.4 and -0.3, mean -0.35; gradient scaled by 1 / (2 rows)
        ("seq-mean-token-sum", -0.35, [1 / 2, 1 / 2]),
    ],
)
def test_ppo_clip_loss_value_and_gradient(agg, expected, grad_scale):
    logp, old_logp, adv = _inputs()
    loss, _ = ppo_clip_policy_loss(logp, old_logp, adv, PPO_MASK, agg=agg)
    assert_close(loss, torch.tensor(expected))
    loss.backward()
    scale = torch.tensor(grad_scale)[:, None]
    # zero on clipped t0, t1 and on padding; -A*ratio (scaled) on unclipped tokens
    assert_close(logp.grad, UNCLIPPED_GRAD * scale)
    assert torch.equal(logp.grad[0], torch.zeros(4))
    # old_logp and advantages are constants
    assert old_logp.grad is None and adv.grad is None


def test_ppo_clip_stats():
    logp, old_logp, adv = _inputs()
    _, stats = ppo_clip_policy_loss(logp, old_logp, adv, PPO_MASK)
    assert set(stats) == {"clip_frac", "ratio_mean", "ratio_max", "approx_kl"}
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    # clipped on t0, t1: 2 / 6
    assert_close(stats["clip_frac"], torch.tensor(1 / 3))
    # (1.5 + 0.5 + 1.1 + 0.9 + 0.5 + 1.5) / 6 = 6.0 / 6 = 1.0; max 1.5 (padding's inf ignored)
    assert_close(stats["ratio_mean"], torch.tensor(1.0))
    assert_close(stats["ratio_max"], torch.tensor(1.5))
    # 0.5 * mean(log(ratio)^2): squares 0.1644020 (x2, ln 1.5), 0.4804530 (x2, ln 0.5),
    # 0.0090840 (ln 1.1), 0.0111008 (ln 0.9); sum 1.3098948; / 6 = 0.2183158; * 0.5 = 0.1091579
    assert_close(stats["approx_kl"], torch.tensor(0.1091579))
    squares = [math.log(r) ** 2 for r in (1.5, 0.5, 1.1, 0.9, 0.5, 1.5)]
    hand = 0.5 * sum(squares) / 6
    assert_close(stats["approx_kl"], torch.tensor(hand))


def test_asymmetric_clip_higher():
    # token 0: A = +1, ratio 1.25; token 1: A = -1, ratio 0.75
    # eps 0.2/0.2: both outside [0.8, 1.2] -> losses -1.2 and 0.8, mean -0.2, clip_frac 1
    # eps_low 0.3, eps_high 0.28: [0.7, 1.28] holds both -> losses -1.25 and 0.75, mean -0.25
    old_logp = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.25, 0.75]]))
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, stats = ppo_clip_policy_loss(logp, old_logp, adv, mask)
    assert_close(loss, torch.tensor(-0.2))
    assert_close(stats["clip_frac"], torch.tensor(1.0))
    loss, stats = ppo_clip_policy_loss(logp, old_logp, adv, mask, clip_eps_low=0.3, clip_eps_high=0.28)
    assert_close(loss, torch.tensor(-0.25))
    assert_close(stats["clip_frac"], torch.tensor(0.0))


def test_ppo_all_masked_sequence_and_batch():
    logp, old_logp, adv = _inputs()
    # an extra all-masked row changes neither the token-mean loss nor the gradient
    mask = torch.cat([PPO_MASK, torch.zeros(1, 4, dtype=PPO_MASK.dtype)])
    logp3 = torch.cat([logp.detach(), torch.full((1, 4), NAN)]).requires_grad_()
    old3 = torch.cat([old_logp.detach(), torch.zeros(1, 4)])
    adv3 = torch.cat([adv.detach(), torch.ones(1, 4)])
    loss, stats = ppo_clip_policy_loss(logp3, old3, adv3, mask)
    assert_close(loss, torch.tensor(-0.7 / 6))
    loss.backward()
    assert torch.equal(logp3.grad[2], torch.zeros(4))
    # nothing valid at all: loss 0, every stat finite
    loss, stats = ppo_clip_policy_loss(logp3, old3, adv3, torch.zeros(3, 4))
    assert torch.equal(loss.detach(), torch.tensor(0.0))
    assert all(torch.isfinite(v) for v in stats.values())


# ---------------------------------------------------------------------------------------------
# GRPO loss = PPO loss + kl_coef * KL. ref_logp = logp - 0.5 on valid tokens, so with
# x = ref - logp = -0.5 each token's k3 = exp(-0.5) + 0.5 - 1 = 0.6065307 - 0.5 = 0.1065307,
# and dk3/dlogp = 1 - exp(-0.5) = 0.3934693.
# ---------------------------------------------------------------------------------------------
def test_grpo_loss_value_gradient_and_stats():
    logp, old_logp, adv = _inputs()
    ref = (logp.detach() - 0.5).masked_fill(PAD, -INF).requires_grad_()
    loss, stats = grpo_loss(
        logp, old_logp, ref, adv, PPO_MASK, clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.1
    )
    # total = -0.7 / 6 + 0.1 * 0.1065307 = -0.1166667 + 0.0106531 = -0.1060136
    assert_close(loss, torch.tensor(-0.1060136))
    assert_close(stats["loss/policy"], torch.tensor(-0.7 / 6))
    assert_close(stats["loss/kl"], torch.tensor(0.1065307))
    assert_close(stats["loss/total"], torch.tensor(-0.1060136))
    assert_close(stats["actor/clip_frac"], torch.tensor(1 / 3))
    assert {"actor/ratio_mean", "actor/ratio_max", "actor/approx_kl"} <= set(stats)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    loss.backward()
    # policy part -A*ratio/6 on unclipped tokens, plus 0.1 * 0.3934693 / 6 = 0.0065578 on every
    # valid token (clipped ones included); padding stays 0
    kl_grad = torch.tensor(0.1 * (1 - math.exp(-0.5)) / 6) * PPO_MASK
    assert_close(logp.grad, UNCLIPPED_GRAD / 6 + kl_grad)
    assert ref.grad is None and old_logp.grad is None and adv.grad is None


def test_grpo_loss_without_reference():
    logp, old_logp, adv = _inputs()
    loss, stats = grpo_loss(
        logp, old_logp, None, adv, PPO_MASK, clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0
    )
    assert_close(loss, torch.tensor(-0.7 / 6))
    assert torch.equal(stats["loss/kl"], torch.tensor(0.0))
    assert torch.equal(stats["loss/total"], stats["loss/policy"])
    with pytest.raises(ValueError, match="kl_coef"):
        grpo_loss(logp, old_logp, None, adv, PPO_MASK, clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.1)


def test_grpo_loss_k1_seq_mean_token_sum():
    # k1 = logp - ref = 0.5 per valid token; seq-mean-token-sum: row sums 2 * 0.5 = 1.0 and
    # 4 * 0.5 = 2.0, mean 1.5. Policy part -0.35 (above). total = -0.35 + 0.2 * 1.5 = -0.05
    logp, old_logp, adv = _inputs()
    ref = logp.detach() - 0.5
    loss, stats = grpo_loss(
        logp,
        old_logp,
        ref,
        adv,
        PPO_MASK,
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        kl_coef=0.2,
        kl_kind="k1",
        agg="seq-mean-token-sum",
    )
    assert_close(stats["loss/kl"], torch.tensor(1.5))
    assert_close(loss, torch.tensor(-0.05))
