"""Metric series as the charts get them: smoothed, downsampled, on one shared step axis.

Each key is smoothed over its whole history (so zooming in does not restart the average), then
min/max-downsampled on its own raw values; the steps any key kept form the shared x axis, and
every key reports its raw and smoothed value at each of those steps (None where it has none).
A short range is returned at full resolution, which is how a zoomed chart gets every point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .downsample import minmax_indices
from .smoothing import debiased_ema
from .workspace import finite

Row = tuple[int, float, "float | None"]


def build_series(
    rows: Mapping[str, Sequence[Row]],
    *,
    start: int | None,
    end: int | None,
    max_points: int,
    smoothing: float,
) -> dict[str, Any]:
    """Chart data for ``rows`` (``{key: [(step, value, wall_time), ...]}`` sorted by step).

    Args:
        start, end: the step range shown (inclusive; None = open). ``rows`` may start earlier:
            the smoothing runs over everything before ``start`` too.
        max_points: the most points each key keeps (min/max buckets past that).
        smoothing: debiased EMA weight in [0, 1); 0 leaves ``smoothed`` equal to ``value``.

    Returns:
        ``{"step": [...], "wall_time": [...], "downsampled": bool, "series": {key: {"value": [...],
        "smoothed": [...], "points": n}}}``; lists aligned with ``step``, None for a gap, a NaN or
        an infinite value.
    """
    windows: dict[str, dict[int, tuple[float, float]]] = {}
    walls: dict[int, float] = {}
    picked: set[int] = set()
    downsampled = False
    for key, series in rows.items():
        smoothed = debiased_ema([value for _, value, _ in series], smoothing)
        lo, hi = _first_at_or_after(series, start), _first_after(series, end)
        picks = minmax_indices([value for _, value, _ in series[lo:hi]], max_points)
        downsampled |= len(picks) < hi - lo
        picked.update(series[lo + i][0] for i in picks)
        windows[key] = {series[i][0]: (series[i][1], smoothed[i]) for i in range(lo, hi)}
        for step, _, wall in series[lo:hi]:
            if wall is not None:
                walls[step] = min(wall, walls.get(step, wall))
    # every key reports its value at every kept step, not only at its own picks: the axis is shared
    steps = sorted(picked)
    series_out = {}
    for key, window in windows.items():
        pairs = [window.get(step) for step in steps]
        series_out[key] = {
            "value": [None if p is None else finite(p[0]) for p in pairs],
            "smoothed": [None if p is None else finite(p[1]) for p in pairs],
            "points": len(window),
        }
    return {
        "step": steps,
        "wall_time": [walls.get(step) for step in steps],
        "downsampled": downsampled,
        "series": series_out,
    }


def _first_at_or_after(series: Sequence[Row], start: int | None) -> int:
    if start is None:
        return 0
    for index, (step, _, _) in enumerate(series):
        if step >= start:
            return index
    return len(series)


def _first_after(series: Sequence[Row], end: int | None) -> int:
    if end is None:
        return len(series)
    for index, (step, _, _) in enumerate(series):
        if step > end:
            return index
    return len(series)
