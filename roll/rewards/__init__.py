"""Reward functions by registered name (rule rewards built in)."""

from roll.rewards.registry import (
    RewardConfig,
    RewardFnConfig,
    get_entry,
    get_reward,
    register_reward,
    reward_names,
)

__all__ = ["RewardConfig", "RewardFnConfig", "get_entry", "get_reward", "register_reward", "reward_names"]
