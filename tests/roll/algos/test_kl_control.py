"""Fixed and adaptive KL coefficient controllers against hand-computed updates."""

import pytest
import torch

from roll.algos import AdaptiveKLController, FixedKLController


def test_fixed_controller_ignores_kl():
    ctrl = FixedKLController(0.05)
    ctrl.update(current_kl=100.0, n_steps=1000)
    assert ctrl.value == 0.05
    assert ctrl.state_dict() == {"value": 0.05}
    with pytest.raises(ValueError, match=">= 0"):
        FixedKLController(-0.1)


def test_adaptive_controller_updates_by_hand():
    ctrl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    # KL 9: error 9/6 - 1 = 0.5, clipped to 0.2; mult 1 + 0.2 * 256 / 10000 = 1.00512
    # value 0.1 * 1.00512 = 0.100512
    ctrl.update(current_kl=9.0, n_steps=256)
    assert ctrl.value == pytest.approx(0.100512, rel=1e-12)
    # KL 5.4 (a 0-dim tensor): error 5.4/6 - 1 = -0.1, inside the clip; mult 1 - 0.1 * 512 / 10000
    # = 0.99488; value 0.100512 * 0.99488 = 0.100512 - 0.000514621 = 0.0999973786
    ctrl.update(current_kl=torch.tensor(5.4, dtype=torch.float64), n_steps=512)
    assert ctrl.value == pytest.approx(0.0999973786, rel=1e-9)
    # KL 0: error -1, clipped to -0.2; mult 1 - 0.2 * 10000 / 10000 = 0.8
    ctrl.update(current_kl=0.0, n_steps=10000)
    assert ctrl.value == pytest.approx(0.0999973786 * 0.8, rel=1e-9)
    # on target: error 0, unchanged
    before = ctrl.value
    ctrl.update(current_kl=6.0, n_steps=123)
    assert ctrl.value == before


def test_adaptive_controller_state_round_trip():
    ctrl = AdaptiveKLController(init_coef=0.2, target=1.0, horizon=100)
    ctrl.update(current_kl=2.0, n_steps=10)  # error 1 -> 0.2; mult 1.02; 0.2 * 1.02 = 0.204
    state = ctrl.state_dict()
    assert state == {"value": pytest.approx(0.204)}
    restored = AdaptiveKLController(init_coef=0.2, target=1.0, horizon=100)
    restored.load_state_dict(state)
    assert restored.value == ctrl.value
    with pytest.raises(ValueError, match="value"):
        restored.load_state_dict({"coef": 0.1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init_coef": -1.0, "target": 1.0, "horizon": 10}, "init_coef"),
        ({"init_coef": 0.1, "target": 0.0, "horizon": 10}, "target"),
        ({"init_coef": 0.1, "target": 1.0, "horizon": 0}, "horizon"),
    ],
)
def test_adaptive_controller_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveKLController(**kwargs)


def test_adaptive_controller_rejects_nan_kl():
    ctrl = AdaptiveKLController(init_coef=0.1, target=1.0, horizon=10)
    with pytest.raises(ValueError, match="finite"):
        ctrl.update(current_kl=float("nan"), n_steps=1)
    assert ctrl.value == 0.1
