"""Dr. GRPO aggregation, dual-clip PPO, GSPO, entropy, value loss and the combined actor loss by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from roll.algos import (
    ActorLossParams,
    aggregate_loss,
    compute_actor_loss,
    entropy_from_logits,
    grpo_loss,
    gspo_policy_loss,
    kl_penalty,
    ppo_clip_policy_loss,
    value_loss,
)

INF, NAN = float("inf"), float("nan")


# ---------------------------------------------------------------------------------------------
# seq-mean-token-sum-norm (Dr. GRPO): row sums / norm_len, mean over all rows
# ---------------------------------------------------------------------------------------------
def test_seq_mean_token_sum_norm():
    # rows sum to 1 + 2 + 3 = 6, 4, 0 (empty); / norm_len 4 -> 1.5, 1.0, 0; mean over 3 rows 2.5 / 3
    # every valid token's gradient is 1 / (4 * 3) = 1/12
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, INF, NAN], [NAN, NAN, NAN]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    out = aggregate_loss(values, mask, "seq-mean-token-sum-norm", norm_len=4)
    assert_close(out, torch.tensor(2.5 / 3))
    out.backward()
    assert_close(values.grad, mask.float() / 12)
    with pytest.raises(ValueError, match="norm_len"):
        aggregate_loss(values, mask, "seq-mean-token-sum-norm")


# ---------------------------------------------------------------------------------------------
# Dual-clip PPO, eps 0.2 (ratio clipped to [0.8, 1.2]), c = 3. One row of four tokens:
#   token  A   ratio  -A*r   -A*clip(r)  PPO = max   dual bound -A*c   loss (A<0: min)   grad*4
#   t0    -1   4.0    4.0    1.2         4.0         3.0               3.0  (dual active)  0
#   t1    -1   2.0    2.0    1.2         2.0         3.0               2.0                 -A*r = 2
#   t2    +1   4.0   -4.0   -1.2        -1.2         (A > 0)          -1.2  (PPO clip)     0
#   t3    -2   0.5    1.0    1.6         1.6         6.0               1.6  (PPO clip)     0
# ---------------------------------------------------------------------------------------------
DUAL_A = torch.tensor([[-1.0, -1.0, 1.0, -2.0]])
DUAL_RATIO = torch.tensor([[4.0, 2.0, 4.0, 0.5]])


def _dual_inputs():
    old_logp = torch.full((1, 4), -2.0)
    return (old_logp + torch.log(DUAL_RATIO)).requires_grad_(), old_logp


def test_dual_clip_active():
    logp, old_logp = _dual_inputs()
    loss, stats = ppo_clip_policy_loss(logp, old_logp, DUAL_A, torch.ones(1, 4), clip_ratio_c=3.0)
    # (3.0 + 2.0 - 1.2 + 1.6) / 4 = 5.4 / 4 = 1.35
    assert_close(loss, torch.tensor(1.35))
    loss.backward()
    assert_close(logp.grad, torch.tensor([[0.0, 2.0, 0.0, 0.0]]) / 4)
    assert_close(stats["dual_clip_frac"], torch.tensor(0.25))
    assert_close(stats["clip_frac"], torch.tensor(0.5))  # t2 and t3


def test_dual_clip_inactive_and_default_off():
    # c = 5: t0's bound 5 > 4, nothing changes: (4.0 + 2.0 - 1.2 + 1.6) / 4 = 6.4 / 4 = 1.6
    # t0 gradient -A*r = 4 (scaled by 1/4), t1 2 (scaled by 1/4)
    logp, old_logp = _dual_inputs()
    loss, stats = ppo_clip_policy_loss(logp, old_logp, DUAL_A, torch.ones(1, 4), clip_ratio_c=5.0)
    assert_close(loss, torch.tensor(1.6))
    loss.backward()
    assert_close(logp.grad, torch.tensor([[4.0, 2.0, 0.0, 0.0]]) / 4)
    assert_close(stats["dual_clip_frac"], torch.tensor(0.0))
    # clip_ratio_c=None: same loss, bitwise, and no dual_clip_frac stat
    logp2, _ = _dual_inputs()
    loss2, stats2 = ppo_clip_policy_loss(logp2, old_logp, DUAL_A, torch.ones(1, 4))
    assert torch.equal(loss2, loss.detach())
    assert "dual_clip_frac" not in stats2
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_clip_policy_loss(logp2, old_logp, DUAL_A, torch.ones(1, 4), clip_ratio_c=1.0)


def test_ppo_default_is_bitwise_the_original_formula():
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=gen)).requires_grad_()
    old_logp = logp.detach() + 0.3 * torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    loss, _ = ppo_clip_policy_loss(logp, old_logp, adv, mask)
    ratio = torch.exp(torch.where(mask.bool(), logp - old_logp, 0.0))
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    reference = (per_token * mask).sum() / mask.sum()
    assert torch.equal(loss, reference)


# ---------------------------------------------------------------------------------------------
# GSPO on two sequences, eps 3e-4 / 4e-4 (sequence ratio clipped to [0.9997, 1.0004]).
#   seq 0: 2 tokens, log-ratios 0.1, -0.3 -> mean -0.1, s_0 = exp(-0.1) = 0.9048374
#   seq 1: 3 tokens, log-ratios 0.2, 0.1, 0.3 -> mean 0.2, s_1 = exp(0.2) = 1.2214028
# ---------------------------------------------------------------------------------------------
GSPO_MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def _gspo_inputs():
    old_logp = torch.tensor([[-1.0, -2.0, 50.0], [-1.5, -0.5, -1.0]])
    log_ratio = torch.tensor([[0.1, -0.3, 0.0], [0.2, 0.1, 0.3]])
    logp = (old_logp + log_ratio).masked_fill(GSPO_MASK == 0, NAN).requires_grad_()
    return logp, old_logp


def test_gspo_positive_advantages_one_clipped():
    # A = +1, +1. seq 0: -A*s = -0.9048374, -A*clip(s) = -0.9997 -> max -0.9048374 (unclipped)
    # seq 1: -1.2214028 vs -1.0004 -> -1.0004 (clipped, zero gradient)
    # loss = (-0.9048374 - 1.0004) / 2 = -0.9526187
    # seq 0 token gradient: d s_0 / d logp_t = s_0 / 2 tokens, times -A, over 2 sequences:
    #   -0.9048374 / 4 = -0.2262094
    logp, old_logp = _gspo_inputs()
    loss, stats = gspo_policy_loss(logp, old_logp, torch.tensor([1.0, 1.0]), GSPO_MASK)
    assert_close(loss, torch.tensor(-0.9526187))
    loss.backward()
    assert_close(logp.grad, torch.tensor([[-0.2262094, -0.2262094, 0.0], [0.0, 0.0, 0.0]]))
    assert_close(stats["clip_frac"], torch.tensor(0.5))
    # (0.9048374 + 1.2214028) / 2 = 1.0631201; max 1.2214028
    assert_close(stats["ratio_mean"], torch.tensor(1.0631201))
    assert_close(stats["ratio_max"], torch.tensor(1.2214028))
    # 0.5 * (0.01 + 0.09 + 0.04 + 0.01 + 0.09) / 5 tokens = 0.024
    assert_close(stats["approx_kl"], torch.tensor(0.024))


def test_gspo_negative_advantage_unclipped():
    # A = +1, -1. seq 1: -A*s = 1.2214028 vs -A*clip = 1.0004 -> max 1.2214028 (unclipped)
    # loss = (-0.9048374 + 1.2214028) / 2 = 0.1582827
    # seq 1 token gradient: -A * s_1 / (3 tokens * 2 sequences) = 1.2214028 / 6 = 0.2035671
    logp, old_logp = _gspo_inputs()
    loss, stats = gspo_policy_loss(logp, old_logp, torch.tensor([1.0, -1.0]), GSPO_MASK)
    assert_close(loss, torch.tensor(0.1582827))
    loss.backward()
    assert_close(logp.grad, torch.tensor([[-0.2262094, -0.2262094, 0.0], [0.2035671, 0.2035671, 0.2035671]]))
    assert_close(stats["clip_frac"], torch.tensor(0.0))


def test_gspo_token_equals_sequence_gspo():
    # the sequence-level objective with s_i = exp(mean log-ratio) differentiated directly
    gen = torch.Generator().manual_seed(3)
    old_logp = -torch.rand(4, 6, generator=gen, dtype=torch.float64)
    logp = (old_logp + 0.01 * torch.randn(4, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    loss, stats = gspo_policy_loss(logp, old_logp, adv, mask, clip_eps_low=0.005, clip_eps_high=0.006)
    (grad,) = torch.autograd.grad(loss, logp)
    # both branches are exercised: seq 1 (s = 0.9943 < 0.995, A < 0) is clipped, the others not
    assert_close(stats["clip_frac"], torch.tensor(0.25, dtype=torch.float64))

    logp_ref = logp.detach().clone().requires_grad_()
    s = torch.exp(((logp_ref - old_logp) * mask).sum(-1) / mask.sum(-1))
    ref = torch.maximum(-adv * s, -adv * s.clamp(1 - 0.005, 1 + 0.006)).mean()
    ref.backward()
    assert_close(loss, ref)
    assert_close(grad, logp_ref.grad)
    # [B] advantages and the same values broadcast to [B, T] give the same loss
    loss_bt, _ = gspo_policy_loss(logp, old_logp, adv[:, None].expand(4, 6), mask, clip_eps_low=0.005)
    loss_b, _ = gspo_policy_loss(logp, old_logp, adv, mask, clip_eps_low=0.005)
    assert torch.equal(loss_bt, loss_b)


# ---------------------------------------------------------------------------------------------
# Entropy
# ---------------------------------------------------------------------------------------------
def test_entropy_by_hand():
    # uniform over 4: log 4 = 1.3862944
    # p = [1/4, 3/4] from logits [0, ln 3]: 0.25 ln 4 + 0.75 ln(4/3) = 0.3465736 + 0.2157616 = 0.5623351
    # one finite logit among -inf: a certain outcome, entropy 0 (not NaN)
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -INF, -INF], [2.0, -INF, -INF, -INF]]])
    assert_close(entropy_from_logits(logits), torch.tensor([[1.3862944, 0.5623351, 0.0]]))


@pytest.mark.parametrize("chunk_rows", [1, 4, 1024])
def test_entropy_matches_categorical_value_and_gradient(chunk_rows):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11, generator=gen)).requires_grad_()
    weights = torch.randn(2, 5, generator=gen)
    out = entropy_from_logits(logits, chunk_rows=chunk_rows)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    (out * weights).sum().backward()

    ref_logits = logits.detach().clone().requires_grad_()
    ref = torch.distributions.Categorical(logits=ref_logits).entropy()
    (ref * weights).sum().backward()
    assert_close(out, ref)
    assert_close(logits.grad, ref_logits.grad)


def test_entropy_gradcheck_and_bf16():
    logits = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: entropy_from_logits(x, chunk_rows=5), (logits,))
    bf16 = torch.randn(2, 3, 8).to(torch.bfloat16)
    out = entropy_from_logits(bf16, chunk_rows=2)
    assert out.dtype == torch.float32
    assert_close(out, torch.distributions.Categorical(logits=bf16.float()).entropy())


# ---------------------------------------------------------------------------------------------
# Clipped value loss, c = 0.2:
#   token  v    old  R    (v-R)^2  clip(v)  (clip-R)^2  0.5*max  clipped?  d/dv (token-mean, /3)
#   t0     1.5  1.0  2.0  0.25     1.2      0.64        0.32     yes       0
#   t1     1.5  1.0  1.0  0.25     1.2      0.04        0.125    no        (v - R) = 0.5
#   t2     0.9  1.0  0.0  0.81     0.9      0.81        0.405    no (eq.)  (v - R) = 0.9
# loss (0.32 + 0.125 + 0.405) / 3 = 0.85 / 3 = 0.2833333
# explained variance: R - v = 0.5, -0.5, -0.9 (mean -0.3; squared deviations 0.64, 0.04, 0.36,
# var 1.04 / 3); R = 2, 1, 0 (var 2 / 3); 1 - 1.04 / 2 = 0.48
# ---------------------------------------------------------------------------------------------
def test_value_loss_clip_case():
    values = torch.tensor([[1.5, 1.5, 0.9, NAN]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0, INF]])
    returns = torch.tensor([[2.0, 1.0, 0.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    assert_close(loss, torch.tensor(0.85 / 3))
    loss.backward()
    assert_close(values.grad, torch.tensor([[0.0, 0.5 / 3, 0.9 / 3, 0.0]]))
    assert_close(stats["value_clip_frac"], torch.tensor(1 / 3))
    assert_close(stats["explained_variance"], torch.tensor(0.48))
    # no clipping: 0.5 * (0.25 + 0.25 + 0.81) / 3 = 0.2183333
    loss, stats = value_loss(values, old, returns, mask, clip_range=None)
    assert_close(loss, torch.tensor(0.655 / 3))
    assert_close(stats["value_clip_frac"], torch.tensor(0.0))


# ---------------------------------------------------------------------------------------------
# Combined actor loss. One row, two valid tokens and a pad:
#   t0: A = +2, ratio 1.1 -> -2.2 (inside [0.8, 1.2]);  t1: A = -1, ratio 0.9 -> 0.9
#   policy token-mean (-2.2 + 0.9) / 2 = -0.65
#   ref = logp - 0.5: k3 = exp(-0.5) + 0.5 - 1 = 0.1065307 per token
#   entropy [2.0, 1.0, pad]: token-mean 1.5
# ---------------------------------------------------------------------------------------------
ACTOR_MASK = torch.tensor([[1, 1, 0]])


def _actor_inputs():
    old_logp = torch.tensor([[-1.0, -1.0, -100.0]])
    logp = (old_logp + torch.log(torch.tensor([[1.1, 0.9, 1.0]]))).masked_fill(ACTOR_MASK == 0, 100.0)
    logp.requires_grad_()
    ref = (logp.detach() - 0.5).masked_fill(ACTOR_MASK == 0, -INF)
    adv = torch.tensor([[2.0, -1.0, 0.0]])
    entropy = torch.tensor([[2.0, 1.0, NAN]], requires_grad=True)
    return logp, old_logp, ref, adv, entropy


def test_actor_loss_kl_in_loss_with_entropy_bonus():
    # total = -0.65 + 0.1 * 0.1065307 - 0.01 * 1.5 = -0.65 + 0.0106531 - 0.015 = -0.6543469
    logp, old_logp, ref, adv, entropy = _actor_inputs()
    cfg = ActorLossParams(kl_coef=0.1, entropy_coef=0.01)
    loss, stats = compute_actor_loss(logp, old_logp, ref, adv, ACTOR_MASK, cfg, entropy=entropy)
    assert_close(loss, torch.tensor(-0.6543469))
    assert_close(stats["loss/policy"], torch.tensor(-0.65))
    assert_close(stats["loss/kl"], torch.tensor(0.1065307))
    assert_close(stats["loss/entropy"], torch.tensor(1.5))
    assert_close(stats["loss/total"], torch.tensor(-0.6543469))
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    loss.backward()
    # entropy gradient -0.01 / 2 valid tokens; policy -A*r / 2 plus KL 0.1 * (1 - exp(-0.5)) / 2
    assert_close(entropy.grad, torch.tensor([[-0.005, -0.005, 0.0]]))
    kl_grad = 0.1 * (1 - math.exp(-0.5)) / 2
    assert_close(logp.grad, torch.tensor([[-2.2 / 2 + kl_grad, 0.9 / 2 + kl_grad, 0.0]]))


def test_actor_loss_kl_in_reward_is_reported_not_applied():
    logp, old_logp, ref, adv, _ = _actor_inputs()
    cfg = ActorLossParams(kl_coef=0.1, kl_kind="k1", use_kl_loss=False)
    loss, stats = compute_actor_loss(logp, old_logp, ref, adv, ACTOR_MASK, cfg)
    assert_close(loss, torch.tensor(-0.65))
    # k1 = logp - ref = 0.5 per token, reported anyway
    assert_close(stats["loss/kl"], torch.tensor(0.5))
    assert "loss/entropy" not in stats
    loss.backward()
    assert_close(logp.grad, torch.tensor([[-1.1, 0.45, 0.0]]))
    # without a reference model the KL is simply 0
    loss, stats = compute_actor_loss(logp, old_logp, None, adv, ACTOR_MASK, cfg)
    assert torch.equal(stats["loss/kl"], torch.tensor(0.0))


def test_actor_loss_gspo_and_dual_clip_dispatch():
    logp, old_logp, ref, adv, _ = _actor_inputs()
    cfg = ActorLossParams(loss="gspo", clip_eps_low=3e-4, clip_eps_high=4e-4)
    loss, stats = compute_actor_loss(logp, old_logp, ref, adv, ACTOR_MASK, cfg)
    direct, direct_stats = gspo_policy_loss(logp, old_logp, adv, ACTOR_MASK)
    assert torch.equal(loss, direct)
    assert torch.equal(stats["actor/clip_frac"], direct_stats["clip_frac"])
    cfg = ActorLossParams(clip_ratio_c=3.0)
    _, stats = compute_actor_loss(logp, old_logp, None, adv, ACTOR_MASK, cfg)
    assert "actor/dual_clip_frac" in stats


def test_actor_loss_errors():
    logp, old_logp, ref, adv, _ = _actor_inputs()
    with pytest.raises(ValueError, match="entropy_coef"):
        compute_actor_loss(logp, old_logp, ref, adv, ACTOR_MASK, ActorLossParams(entropy_coef=0.01))
    with pytest.raises(ValueError, match="kl_coef"):
        compute_actor_loss(logp, old_logp, None, adv, ACTOR_MASK, ActorLossParams(kl_coef=0.1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "trpo"}, "loss"),
        ({"loss": "gspo", "clip_ratio_c": 3.0}, "dual clip"),
        ({"clip_ratio_c": 0.5}, "clip_ratio_c"),
        ({"agg": "seq-mean-token-sum-norm"}, "norm_len"),
        ({"norm_len": 4096}, "norm_len"),
        ({"agg": "sum"}, "agg"),
        ({"kl_kind": "k4"}, "kl_kind"),
        ({"clip_eps_low": -0.1}, "clip_eps"),
    ],
)
def test_actor_loss_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ActorLossParams(**kwargs)


def test_actor_loss_params_frozen_and_dr_grpo():
    cfg = ActorLossParams(agg="seq-mean-token-sum-norm", norm_len=8)
    with pytest.raises(AttributeError):
        cfg.kl_coef = 1.0  # type: ignore[misc]
    # policy tokens -2.2 and 0.9 sum to -1.3; / norm_len 8 = -0.1625 (one sequence)
    logp, old_logp, _, adv, _ = _actor_inputs()
    loss, _ = compute_actor_loss(logp, old_logp, None, adv, ACTOR_MASK, cfg)
    assert_close(loss, torch.tensor(-0.1625))


# ---------------------------------------------------------------------------------------------
# grpo_loss is unchanged: bitwise the original PPO + kl_coef * KL formula, values and gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_grpo_loss_bitwise_unchanged(agg):
    gen = torch.Generator().manual_seed(1)
    old_logp = -torch.rand(3, 5, generator=gen)
    logp = (old_logp + 0.3 * torch.randn(3, 5, generator=gen)).requires_grad_()
    ref = old_logp + 0.2 * torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    kw = {"clip_eps_low": 0.2, "clip_eps_high": 0.28, "agg": agg}
    loss, stats = grpo_loss(logp, old_logp, ref, adv, mask, kl_coef=0.05, **kw)
    (grad,) = torch.autograd.grad(loss, logp)

    # the formula grpo_loss had before compute_actor_loss existed
    policy, ppo_stats = ppo_clip_policy_loss(logp, old_logp, adv, mask, **kw)
    valid = mask.bool()
    per_token_kl = kl_penalty(torch.where(valid, logp, 0.0), torch.where(valid, ref, 0.0), "k3")
    reference = policy + 0.05 * aggregate_loss(per_token_kl, valid, agg)
    (ref_grad,) = torch.autograd.grad(reference, logp)
    assert torch.equal(loss, reference)
    assert torch.equal(grad, ref_grad)
    assert list(stats) == ["loss/policy", "loss/kl", "loss/total"] + [f"actor/{k}" for k in ppo_stats]
