"""Debiased exponential moving average, the smoothing TensorBoard and W&B draw over raw curves.

A plain EMA started at 0 drags the first points towards 0; dividing by ``1 - w^t`` (as Adam does
for its moments) removes that bias, so the smoothed curve starts on the data:

    ema_t      = w * ema_{t-1} + (1 - w) * x_t,   ema_0 = 0
    smoothed_t = ema_t / (1 - w^t)

where ``t`` counts the finite values seen so far. As in TensorBoard, a non-finite value (NaN,
±inf) is passed through as it is and does not move the average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def debiased_ema(values: Sequence[float], weight: float) -> list[float]:
    """Smooth ``values`` with a debiased EMA of ``weight`` (0 = no smoothing, 0.99 = very smooth).

    Args:
        values: the raw series, in x order.
        weight: the EMA weight ``w`` in ``[0, 1)``.

    Returns:
        A list of the same length: the smoothed value at each finite point, the raw value at each
        non-finite one.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1) (got {weight})")
    smoothed: list[float] = []
    ema, count = 0.0, 0
    for raw in values:
        x = float(raw)
        if not math.isfinite(x):
            smoothed.append(x)
            continue
        count += 1
        ema = weight * ema + (1.0 - weight) * x
        smoothed.append(ema / (1.0 - weight**count))
    return smoothed
