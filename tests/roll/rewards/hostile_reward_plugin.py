"""Test plugin (imported through ``imports:``): reward functions that misbehave on purpose.

The reward worker's child process imports this module by name to run the time-limited ones, so it
must stay importable without pytest.
"""

from __future__ import annotations

import os
import time
from typing import Any

from roll.rewards import register_reward


@register_reward("test_raises")
def raises_on_bad(response: str, row: dict[str, Any]) -> float:
    if "bad" in response:
        raise ValueError("cannot score a bad sample")
    return 1.0


@register_reward("test_sleeps")
def sleeps(response: str, row: dict[str, Any]) -> float:
    """Sleeps row["sleep"] seconds (a hung function), then scores 1."""
    time.sleep(float(row.get("sleep", 0)))
    return 1.0


@register_reward("test_big_power")
def big_power(response: str, row: dict[str, Any]) -> float:
    """Computes base**base**base**base: one C call that no signal can interrupt."""
    base = int(row["base"])
    return float(base**base**base**base > 0)


@register_reward("test_exits")
def exits(response: str, row: dict[str, Any]) -> float:
    """Kills its own process when the response says so."""
    if response == "exit":
        os._exit(3)
    print("noise on stdout must not confuse the reply pipe")
    return 0.5


@register_reward("test_nan")
def nan(response: str, row: dict[str, Any]) -> float:
    return float("nan")
