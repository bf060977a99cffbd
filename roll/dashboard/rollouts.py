"""Rollout rows of one step, grouped by prompt group, sorted and searched for the browser."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from .workspace import finite


def group_rollouts(rows: Sequence[dict[str, Any]], sort: str, order: str, query: str) -> dict[str, Any]:
    """Group rollout rows by ``group_id``; keep whole groups where any text matches ``query``.

    Args:
        rows: rollout rows of one step (``sample_id, group_id, prompt, response, reward,
            advantage, state, data_json``).
        sort: ``group`` (group id, then sample id), ``reward`` or ``advantage``: completions are
            sorted by that value inside each group and groups by their mean of it.
        order: ``desc`` or ``asc`` for the value sorts; missing values always go last.
        query: case-insensitive substring searched in prompts, responses and sample ids.

    Returns:
        ``{"groups": [{"group_id", "prompt", "mean_reward", "samples": [...]}], "rows": n,
        "matched_rows": n}``; each sample has ``match`` set when it contains ``query``.
    """
    needle = query.casefold()
    groups: dict[Any, dict[str, Any]] = {}
    for row in rows:
        sample = {
            "sample_id": row["sample_id"],
            "response": row["response"],
            "reward": finite(row["reward"]),
            "advantage": finite(row["advantage"]),
            "state": row["state"],
            "data": json.loads(row["data_json"]) if row.get("data_json") else {},
            "match": bool(needle) and _contains(needle, row["response"], row["sample_id"]),
        }
        group = groups.setdefault(
            row["group_id"], {"group_id": row["group_id"], "prompt": row["prompt"], "samples": []}
        )
        group["samples"].append(sample)
        if needle and _contains(needle, row["prompt"]):
            group["prompt_match"] = True
    kept = [
        g
        for g in groups.values()
        if not needle or g.get("prompt_match") or any(s["match"] for s in g["samples"])
    ]
    for group in kept:
        group["mean_reward"] = _mean(s["reward"] for s in group["samples"])
        group.setdefault("prompt_match", False)
    for group in kept:  # ties of the value sorts keep this order
        group["samples"].sort(key=lambda s: _natural_key(s["sample_id"]))
    if sort in ("reward", "advantage"):
        for group in kept:
            group["samples"].sort(key=lambda s: _sort_key(s[sort], order))
        kept.sort(key=lambda g: _sort_key(_mean(s[sort] for s in g["samples"]), order))
    else:
        kept.sort(key=lambda g: (g["group_id"] is None, g["group_id"] if g["group_id"] is not None else 0))
    return {
        "groups": kept,
        "rows": len(rows),
        "matched_rows": sum(len(g["samples"]) for g in kept),
    }


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key that orders '...:2' before '...:10'."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", str(text))]


def _contains(needle: str, *texts: str | None) -> bool:
    return any(text is not None and needle in str(text).casefold() for text in texts)


def _mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _sort_key(value: float | None, order: str) -> tuple[bool, float]:
    if value is None or math.isnan(value):
        return (True, 0.0)
    return (False, -value if order == "desc" else value)
