"""Reward functions by registered name.

A reward function scores one completion: ``fn(response: str, row: dict, **params) -> float``.
Register your own with ``@register_reward("my_reward")`` in a module listed under ``imports:`` in
the job YAML, then name it in ``reward.functions``.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import Field

from roll.config.base import ConfigBase
from roll.errors import ConfigError

RewardFn = Callable[..., float]
_REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def wrap(fn: RewardFn) -> RewardFn:
        if name in _REWARDS and _REWARDS[name] is not fn:
            raise ValueError(f"reward function {name!r} is already registered")
        _REWARDS[name] = fn
        return fn

    return wrap


def get_reward(name: str) -> RewardFn:
    from roll.rewards import code, rules  # noqa: F401  (registers the built-ins)

    if name not in _REWARDS:
        raise ConfigError(
            f"reward.functions: unknown reward function {name!r}; known: {', '.join(sorted(_REWARDS))}. "
            "Register your own with @register_reward and list its module under imports:"
        )
    return _REWARDS[name]


def reward_names() -> list[str]:
    from roll.rewards import code, rules  # noqa: F401

    return sorted(_REWARDS)


class RewardFnConfig(ConfigBase):
    """One reward term: a registered function, its weight and its keyword parameters."""

    name: str = Field(description="Registered reward function name, e.g. exact_match.")
    weight: float = Field(1.0, description="The total reward is the weighted sum of the terms.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for it.")


class RewardConfig(ConfigBase):
    """How completions are scored."""

    functions: list[RewardFnConfig] = Field(
        default_factory=lambda: [RewardFnConfig(name="exact_match")],
        description="Reward terms, summed with their weights.",
    )
