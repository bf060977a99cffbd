"""Debiased EMA against hand-computed values (TensorBoard / W&B smoothing)."""

from __future__ import annotations

import math

import pytest

from roll.dashboard.smoothing import debiased_ema


def test_hand_computed_half_weight():
    # w = 0.5: ema = 0.5, 1.25, 2.125; debiased by 1 - 0.5^t = 0.5, 0.75, 0.875
    assert debiased_ema([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 5 / 3, 17 / 7])


def test_hand_computed_heavy_weight():
    # w = 0.8: ema = 0.8, 0.64; debiased by 0.2, 0.36 -> 4.0, 16/9
    assert debiased_ema([4.0, 0.0], 0.8) == pytest.approx([4.0, 16 / 9])


def test_first_value_is_unbiased_and_constant_stays_constant():
    assert debiased_ema([7.0], 0.99) == pytest.approx([7.0])
    assert debiased_ema([3.0] * 50, 0.9) == pytest.approx([3.0] * 50)


def test_zero_weight_is_identity():
    values = [0.1, -2.0, 5.5]
    assert debiased_ema(values, 0.0) == values


def test_non_finite_values_pass_through_without_moving_the_average():
    out = debiased_ema([1.0, math.nan, 2.0, math.inf], 0.5)
    assert out[0] == pytest.approx(1.0)
    assert math.isnan(out[1])
    assert out[2] == pytest.approx(5 / 3)  # as if the NaN were not there
    assert out[3] == math.inf


@pytest.mark.parametrize("weight", [-0.1, 1.0, 1.5])
def test_weight_outside_unit_interval_is_refused(weight):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        debiased_ema([1.0], weight)
