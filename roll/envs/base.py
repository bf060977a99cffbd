"""The text-environment API: ``TextEnv``, ``StepResult``, ``EnvConfig`` and the env registry.

A text environment is a gym-style game whose observations and actions are strings, so a language
model can play it::

    env = make_env(EnvConfig(name="frozen_lake", max_turns=12, params={"size": 4}))
    observation = env.reset(seed=3)                  # instructions + the board, as text
    result = env.step("<action>right</action>")      # StepResult(observation, reward, ...)

Register your own with ``@register_env("my_env", params=MyParams)`` on a class (or factory) called
as ``cls(params, max_turns=...)``, in a module listed under ``imports:``. Environments do not
enforce ``max_turns`` themselves and need not catch their own exceptions:
:class:`~roll.envs.episode.Episode` (used by the environment worker and by ``run_episode``) applies
the turn limit and isolates errors the same way for every environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from roll.config.base import ConfigBase
from roll.errors import ConfigError


@dataclass(frozen=True)
class StepResult:
    """What one ``step`` (or, with reward 0, a ``reset``) returns.

    Attributes:
        observation: the text the policy sees next.
        reward: the reward of this step.
        terminated: the episode reached a terminal state of the game (goal, hole, answer ...).
        truncated: the episode was cut off (turn limit, environment error).
        info: extra facts: ``"invalid"`` (the action could not be parsed), ``"outcome"`` (why the
            episode ended: ``"goal"``, ``"hole"``, ``"solved"``, ``"correct"``, ``"turn_limit"``,
            ``"invalid_limit"``, ``"error"`` ...), ``"error"`` (an environment exception's text).
    """

    observation: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True when the episode is over (terminated or truncated)."""
        return self.terminated or self.truncated


@runtime_checkable
class TextEnv(Protocol):
    """A gym-style environment over text; each instance plays one episode at a time."""

    #: The episode is truncated after this many actions (enforced by ``Episode``).
    max_turns: int

    def reset(self, seed: int) -> str:
        """Start an episode (deterministic given ``seed``) and return the first observation."""
        ...

    def step(self, action_text: str) -> StepResult:
        """Apply the policy's raw output text; format errors are handled as the env documents."""
        ...

    def close(self) -> None:
        """Release resources; the env is not used afterwards."""
        ...


class NoParams(ConfigBase):
    """Parameters of an environment that takes none."""


@dataclass(frozen=True)
class EnvEntry:
    """A registered environment: its factory and the pydantic model of its ``params``."""

    name: str
    factory: Callable[..., TextEnv]
    params_model: type[BaseModel]


_ENVS: dict[str, EnvEntry] = {}


def register_env(name: str, *, params: type[BaseModel] = NoParams) -> Callable:
    """Class or factory decorator: ``@register_env("frozen_lake", params=FrozenLakeParams)``.

    The decorated object is called as ``factory(params_instance, max_turns=int)``.
    """

    def wrap(factory: Callable[..., TextEnv]) -> Callable[..., TextEnv]:
        if name in _ENVS and _ENVS[name].factory is not factory:
            raise ValueError(f"environment {name!r} is already registered by {_ENVS[name].factory!r}")
        _ENVS[name] = EnvEntry(name, factory, params)
        return factory

    return wrap


def _load_builtins() -> None:
    from roll.envs import frozen_lake, sokoban, tool_use  # noqa: F401  (they register themselves)


def env_names() -> list[str]:
    """Names of every registered environment."""
    _load_builtins()
    return sorted(_ENVS)


def _unknown_env_message(name: str) -> str:
    return (
        f"unknown environment {name!r}; known environments: {', '.join(env_names())}. Register your "
        "own with @register_env and list its module under imports:"
    )


def get_env_entry(name: str) -> EnvEntry:
    """The registry entry of ``name``; ``ConfigError`` listing the known names if there is none."""
    _load_builtins()
    if name not in _ENVS:
        raise ConfigError(_unknown_env_message(name))
    return _ENVS[name]


class EnvConfig(ConfigBase):
    """One environment: which registered game, its turn limit and its parameters."""

    name: str = Field(description="Registered environment name, e.g. frozen_lake, sokoban or tool_use.")
    max_turns: int = Field(
        20, ge=1, le=1000, description="Actions per episode; the episode is truncated after this many."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Environment parameters, checked against the environment's own parameter model "
        "(e.g. frozen_lake: size, slippery); unset ones take that model's defaults.",
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        _load_builtins()
        if name not in _ENVS:
            raise ValueError(_unknown_env_message(name))
        return name

    @field_validator("params")
    @classmethod
    def _check_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Validate against the env's parameter model; store the full dict, defaults filled in."""
        name = info.data.get("name")
        if name is None:  # the name was rejected; that error is reported on its own
            return params
        try:
            parsed = _ENVS[name].params_model.model_validate(params)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(('params', *map(str, e['loc'])))}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ValueError(f"environment {name!r}: {problems}") from None
        return parsed.model_dump()


def make_env(cfg: EnvConfig) -> TextEnv:
    """Build a fresh environment instance from its config."""
    entry = get_env_entry(cfg.name)
    return entry.factory(entry.params_model.model_validate(cfg.params), max_turns=cfg.max_turns)


def find_tags(text: str, tag: str) -> list[str]:
    """Contents of every ``<tag>...</tag>`` in ``text`` (case-insensitive, stripped), in order."""
    pattern = rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>"  # re caches the compiled pattern
    return [found.strip() for found in re.findall(pattern, text, re.IGNORECASE | re.DOTALL)]


def parse_choice(text: str, choices: tuple[str, ...], tag: str = "action") -> str | None:
    """The chosen word: the last ``<action>word</action>``, else the whole reply if it is one word.

    Matching is case-insensitive and ignores surrounding punctuation; ``None`` when the reply names
    none of ``choices`` (a format error).
    """
    tags = find_tags(text, tag)
    word = (tags[-1] if tags else text).strip().strip(".!'\"`").strip().lower()
    return word if word in choices else None
