"""Controllers for the KL coefficient beta: fixed, or adapted towards a target KL.

Ziegler et al., 2019 ("Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593,
sec. 2.2) adapt beta with a log-space proportional controller so the measured KL to the reference
stays near a target:

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)
    beta_{t+1} = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

``n_steps`` is the number of samples (or steps) the measurement covers, so a batch twice as large
moves beta twice as far; ``horizon`` sets the time constant (the paper uses 10000).

Both controllers are plain Python state, not tensors: the coefficient is a hyper-parameter that
the driver reads (``.value``), updates once per step, and saves in checkpoints
(``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["AdaptiveKLController", "FixedKLController"]

# Proportional error bound from the paper: one wild KL measurement moves beta by at most
# 20% * n_steps / horizon.
_MAX_PROPORTIONAL_ERROR = 0.2


def _check_state(state: dict[str, Any]) -> float:
    if set(state) != {"value"}:
        raise ValueError(f"KL controller state must have exactly the key 'value', got {sorted(state)}")
    return float(state["value"])


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing.

    Args:
        coef: beta, >= 0.
    """

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Kept for the common interface: a fixed coefficient ignores the measured KL."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _check_state(state)


class AdaptiveKLController:
    """Adaptive KL coefficient (arXiv:1909.08593, sec. 2.2).

    Args:
        init_coef: beta at step 0, >= 0.
        target: the KL (in nats, same estimator as the ``current_kl`` passed to ``update``) to
            steer towards, > 0.
        horizon: time constant in samples (> 0); each update multiplies beta by
            ``1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef < 0:
            raise ValueError(f"init_coef must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move beta towards the value that would give ``target`` KL.

        Args:
            current_kl: KL measured on the last batch (a float or a 0-dim tensor).
            n_steps: how many samples (or steps) that measurement covers, >= 0.
        """
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            # A NaN here would silently turn beta into NaN for the rest of the run.
            raise ValueError(f"current_kl must be finite, got {current_kl}")
        error = current_kl / self.target - 1.0
        error = min(max(error, -_MAX_PROPORTIONAL_ERROR), _MAX_PROPORTIONAL_ERROR)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _check_state(state)
