"""Per-token KL(pi_theta || pi_ref) estimators for the KL penalty of RLHF / GRPO losses.

With samples drawn from pi_theta and the log-ratio ``x = log pi_ref(y) - log pi_theta(y)``, John
Schulman's note "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html) gives three
single-sample estimators of KL(pi_theta || pi_ref):

    k1 = -x             = logp - ref_logp             unbiased, high variance, can be < 0
    k2 = x**2 / 2       = 0.5 * (logp - ref_logp)**2  biased (slightly, while the policies are
                                                      close), low variance, always >= 0
    k3 = exp(x) - x - 1                               unbiased, low variance, always >= 0

DeepSeekMath (arXiv:2402.03300, sec. 4.1.1, eq. 4) uses k3 for GRPO's KL term:

    D_KL = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1

and it is the default here. All three are exactly 0 where ``logp == ref_logp``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["KLKind", "kl_penalty"]

KLKind = Literal["k1", "k2", "k3"]

# exp(20) ~ 4.9e8 is comfortably finite in float32; without a bound one bad token (a pad, a
# sampling glitch) could overflow exp and make the whole loss inf. Same bound as verl's.
_K3_LOG_RATIO_BOUND = 20.0


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k3") -> Tensor:
    """Elementwise KL estimate between the policy and the reference policy, per token.

    Args:
        logp: [...] log-probabilities of the sampled tokens under the current policy
            (typically [B, T]).
        ref_logp: [...] log-probabilities of the same tokens under the reference policy, same
            shape as ``logp``.
        kind: ``"k1"`` (``logp - ref_logp``), ``"k2"`` (``0.5 * (logp - ref_logp)**2``) or
            ``"k3"`` (``exp(x) - x - 1`` with ``x = ref_logp - logp``, clamped to [-20, 20]
            before ``exp``).

    Returns:
        [...] per-token estimate, same shape as the inputs, unmasked and unreduced (mask and
        aggregate with ``roll.algos.aggregate_loss``). Gradients flow into both inputs; callers
        that treat ``ref_logp`` as a constant detach it (``grpo_loss`` does).
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp must have the same shape, got {tuple(logp.shape)} and {tuple(ref_logp.shape)}"
        )
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp).square()
    if kind == "k3":
        log_ratio = (ref_logp - logp).clamp(-_K3_LOG_RATIO_BOUND, _K3_LOG_RATIO_BOUND)
        # exp(0) - 0 - 1 is exactly 0.0 in IEEE arithmetic, so equal inputs give a bitwise-zero KL.
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator kind {kind!r}; use one of 'k1', 'k2', 'k3'")
