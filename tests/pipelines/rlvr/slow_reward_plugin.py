"""Test plugin (imported through ``imports:``): a deterministic reward that takes ~1 s per step,
so a test can SIGKILL the driver between two checkpoints without racing it."""

import time

from roll.rewards import register_reward
from roll.rewards.rules import first_int_match


@register_reward("slow_first_int_match")
def slow_first_int_match(response: str, row: dict) -> float:
    time.sleep(0.004)
    return first_int_match(response, row)
