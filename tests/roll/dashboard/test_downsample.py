"""Min/max downsampling: hand-computed buckets, spikes survive, order and bounds kept."""

from __future__ import annotations

import math

import pytest

from roll.dashboard.downsample import minmax_downsample, minmax_indices


def test_hand_computed_buckets():
    # 10 points, max 6: first + last + 2 buckets of the 8 inner points (indices 1-4 and 5-8).
    # bucket 1: y = 5, 1, 9, 2 -> min at index 2 (1), max at index 3 (9)
    # bucket 2: y = 3, 7, 4, 8 -> min at index 5 (3), max at index 8 (8)
    ys = [0, 5, 1, 9, 2, 3, 7, 4, 8, 6]
    points = [(x, y) for x, y in enumerate(ys)]
    assert minmax_downsample(points, 6) == [(0, 0), (2, 1), (3, 9), (5, 3), (8, 8), (9, 6)]


def test_max_before_min_keeps_original_order():
    ys = [0, 9, 1, 5, 5, 5]  # 4 inner points, max 4 -> one bucket: max at 1 comes before min at 2
    assert minmax_indices(ys, 4) == [0, 1, 2, 5]


def test_short_series_come_back_whole():
    points = [(1, 0.5), (2, 0.25), (3, 1.0)]
    assert minmax_downsample(points, 4) == points
    assert minmax_downsample([], 10) == []


def test_flat_bucket_keeps_one_point():
    assert minmax_indices([1.0] * 10, 6) == [0, 1, 5, 9]


def test_spikes_and_dips_survive_long_series():
    n = 10_000
    ys = [math.sin(i / 50) for i in range(n)]
    ys[4321], ys[777] = 100.0, -100.0
    kept = minmax_indices(ys, 100)
    assert len(kept) <= 100
    assert kept[0] == 0 and kept[-1] == n - 1
    assert kept == sorted(set(kept))
    assert 4321 in kept and 777 in kept
    down = [ys[i] for i in kept]
    assert max(down) == 100.0 and min(down) == -100.0


def test_nan_skipped_inside_a_bucket_with_values():
    ys = [0.0, math.nan, 3.0, 1.0, math.nan, math.nan, math.nan, math.nan, 2.0]
    # inner 7 points, max 4 -> one bucket (indices 1-7): min 1.0 at 3, max 3.0 at 2
    assert minmax_indices(ys, 4) == [0, 2, 3, 8]
    # a bucket of NaN only keeps its first point (the gap stays visible)
    assert minmax_indices([0.0] + [math.nan] * 8 + [1.0], 4) == [0, 1, 9]


def test_max_points_below_four_is_refused():
    with pytest.raises(ValueError, match="at least 4"):
        minmax_indices([1.0] * 10, 3)
