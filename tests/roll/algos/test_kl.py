"""KL estimators k1/k2/k3 against hand-computed values."""

import math

import pytest
import torch
from torch.testing import assert_close

from roll.algos import kl_penalty

LOGP = torch.tensor([-1.0, -2.0])
REF = torch.tensor([-1.5, -1.0])


def test_k1_k2_by_hand():
    # logp - ref = [-1.0 + 1.5, -2.0 + 1.0] = [0.5, -1.0]
    assert_close(kl_penalty(LOGP, REF, "k1"), torch.tensor([0.5, -1.0]))
    # 0.5 * [0.25, 1.0] = [0.125, 0.5]
    assert_close(kl_penalty(LOGP, REF, "k2"), torch.tensor([0.125, 0.5]))


def test_k3_by_hand_and_is_default():
    # x = ref - logp = [-0.5, 1.0]
    # exp(-0.5) - (-0.5) - 1 = 0.6065307 + 0.5 - 1 = 0.1065307
    # exp(1.0) - 1.0 - 1     = 2.7182818 - 2       = 0.7182818
    expected = torch.tensor([0.1065307, 0.7182818])
    assert_close(kl_penalty(LOGP, REF, "k3"), expected)
    assert_close(kl_penalty(LOGP, REF), expected)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_equal_inputs_give_bitwise_zero(kind):
    logp = torch.log_softmax(torch.randn(3, 7, generator=torch.Generator().manual_seed(0)), -1)
    out = kl_penalty(logp, logp.clone(), kind)
    assert torch.equal(out, torch.zeros_like(logp))


def test_k3_clamps_log_ratio_to_20():
    # x = ref - logp = -100 -> clamped to -20: exp(-20) + 20 - 1 = 19.000000002
    # x = +100            -> clamped to  20: exp(20) - 20 - 1 = 485165195.41 - 21 = 485165174.41
    logp = torch.tensor([0.0, -100.0], dtype=torch.float64)
    ref = torch.tensor([-100.0, 0.0], dtype=torch.float64)
    out = kl_penalty(logp, ref, "k3")
    assert torch.isfinite(out).all()
    assert_close(out, torch.tensor([19.0 + math.exp(-20), math.exp(20) - 21.0], dtype=torch.float64))


def test_k2_k3_nonnegative_and_gradients_flow():
    gen = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(4, 9, generator=gen), -1).requires_grad_()
    ref = torch.log_softmax(torch.randn(4, 9, generator=gen), -1)
    assert (kl_penalty(logp, ref, "k2") >= 0).all()
    k3 = kl_penalty(logp, ref, "k3")
    assert (k3 >= 0).all()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp)
    k3.sum().backward()
    assert_close(logp.grad, 1 - torch.exp(ref - logp.detach()))


def test_bad_kind_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(LOGP, REF, "kl")
    with pytest.raises(ValueError, match="same shape"):
        kl_penalty(LOGP, REF[:1])
