"""Built-in rule rewards: exact answer match, first-integer match, a regex format check."""

from __future__ import annotations

import re
from typing import Any

from roll.rewards.registry import register_reward

_INT = re.compile(r"-?\d+")


def normalise(text: str) -> str:
    return " ".join(text.strip().split())


@register_reward("exact_match")
def exact_match(response: str, row: dict[str, Any]) -> float:
    """1 if the whole completion (whitespace-normalised) equals the answer, else 0."""
    return float(normalise(response) == normalise(str(row["answer"])))


@register_reward("first_int_match")
def first_int_match(response: str, row: dict[str, Any]) -> float:
    """1 if the first integer in the completion equals the integer answer, else 0."""
    found = _INT.search(response)
    return float(found is not None and int(found.group()) == int(str(row["answer"]).strip()))


@register_reward("format")
def format_match(response: str, row: dict[str, Any], pattern: str = r"^\s*-?\d+\s*$") -> float:
    """1 if the completion matches ``pattern`` (re.fullmatch after stripping), else 0."""
    return float(re.fullmatch(pattern, response.strip()) is not None)
