"""Min/max downsampling of long metric series, so a chart of 100k steps stays small without
losing its spikes.

Plain averaging or stride sampling hides exactly what a training curve is watched for (a reward
collapse, a KL spike that lasted one step). Instead the series is cut into equal-count buckets and
each bucket keeps its smallest and its largest point, in their original order; the first and the
last point are always kept, so the x range is unchanged. This is the "min/max" decimation that
plotting tools use for oscilloscope-like data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

P = TypeVar("P")

MIN_POINTS = 4


def minmax_indices(values: Sequence[float], max_points: int) -> list[int]:
    """Indices (ascending) of the points kept when ``values`` is downsampled to ``max_points``.

    Args:
        values: the series' y values, ``n`` of them, in x order. NaN values are skipped inside a
            bucket that also holds finite values (a bucket of NaN only keeps its first point).
        max_points: upper bound on the number of indices returned; at least 4.

    Returns:
        All ``n`` indices when ``n <= max_points``; otherwise index 0, index ``n - 1`` and, for each
        of ``(max_points - 2) // 2`` equal-count buckets of the points between them, the index of
        the bucket's minimum and of its maximum (one index when they coincide). The first
        occurrence wins among equal values.
    """
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS} (got {max_points})")
    n = len(values)
    if n <= max_points:
        return list(range(n))
    inner = n - 2  # points between the kept first and last
    buckets = (max_points - 2) // 2
    kept = [0]
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        kept.extend(_bucket_extremes(values, lo, hi))
    kept.append(n - 1)
    return kept


def _bucket_extremes(values: Sequence[float], lo: int, hi: int) -> list[int]:
    """Indices of the min and max of ``values[lo:hi]`` in ascending order (NaN skipped)."""
    finite = [i for i in range(lo, hi) if not math.isnan(values[i])]
    if not finite:
        return [lo] if hi > lo else []
    low = min(finite, key=lambda i: values[i])
    high = max(finite, key=lambda i: values[i])
    return [low] if low == high else sorted((low, high))


def minmax_downsample(points: Sequence[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    """Downsample ``(x, y)`` points (in x order) to at most ``max_points``, keeping the first and
    last point and each bucket's min and max y, in their original order (see
    :func:`minmax_indices`). Returns a new list; short series come back whole."""
    indices = minmax_indices([float(y) for _, y in points], max_points)
    return [points[i] for i in indices]
