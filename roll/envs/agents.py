"""Agents that play text environments without a model, and ``run_episode``.

Agents read only observation text, as a policy would, so they can stand in for the policy when
testing environments, the environment worker or the agentic pipeline's plumbing::

    env = make_env(EnvConfig(name="sokoban"))
    trajectory = run_episode(env, scripted_agent("sokoban"), seed=7)
    assert trajectory.outcome == "solved"
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from roll.envs.base import TextEnv
from roll.envs.episode import Episode
from roll.envs.frozen_lake import FrozenLakeAgent
from roll.envs.sokoban import SokobanAgent
from roll.envs.tool_use import ToolUseAgent


class Agent(Protocol):
    """Chooses one reply per observation."""

    def reset(self, seed: int) -> None:
        """Start a new episode (seeds any randomness)."""
        ...

    def act(self, observation: str) -> str:
        """The reply (action text) to ``observation``."""
        ...


class RandomAgent:
    """Replies with one of ``actions``, uniformly at random (seeded by ``reset``)."""

    def __init__(self, actions: list[str]) -> None:
        if not actions:
            raise ValueError("RandomAgent needs at least one action")
        self.actions = list(actions)
        self._rng = random.Random(0)

    def reset(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def act(self, observation: str) -> str:
        return self._rng.choice(self.actions)


_SCRIPTED = {"frozen_lake": FrozenLakeAgent, "sokoban": SokobanAgent, "tool_use": ToolUseAgent}
_RANDOM_ACTIONS = {
    "frozen_lake": [f"<action>{a}</action>" for a in ("left", "down", "right", "up")] + ["jump"],
    "sokoban": [f"<action>{a}</action>" for a in ("up", "down", "left", "right")] + ["wait"],
    "tool_use": [
        "<tool>lookup: Varnhold population</tool>",
        "<tool>lookup: Talbrook area</tool>",
        "<tool>calculator: 184200 / 61.4</tool>",
        "<answer>3000</answer>",
        "<answer>42</answer>",
        "I am not sure.",
    ],
}


def scripted_agent(env_name: str) -> Agent:
    """The planning agent of a built-in environment (BFS for the grid games, a script for tool_use)."""
    if env_name not in _SCRIPTED:
        raise KeyError(f"no scripted agent for {env_name!r}; built-in ones: {', '.join(sorted(_SCRIPTED))}")
    return _SCRIPTED[env_name]()


def random_agent(env_name: str) -> RandomAgent:
    """A random agent over a built-in environment's actions, plus one invalid reply."""
    if env_name not in _RANDOM_ACTIONS:
        raise KeyError(
            f"no random actions for {env_name!r}; built-in ones: {', '.join(sorted(_RANDOM_ACTIONS))}"
        )
    return RandomAgent(_RANDOM_ACTIONS[env_name])


@dataclass(frozen=True)
class Turn:
    """One turn: what the agent saw, what it replied, and what that earned."""

    observation: str
    action: str
    reward: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trajectory:
    """One played episode.

    Attributes:
        seed: the reset seed.
        turns: the turns in order.
        final_observation: the observation after the last turn.
        total_return: the sum of the turn rewards.
        end_reason: ``"terminated"``, ``"truncated"`` or ``"error"``.
        outcome: the environment's ``info["outcome"]`` at the end (``"goal"``, ``"turn_limit"`` ...),
            or ``None``.
        error: the environment error that ended the episode (reset or step), or ``None``.
    """

    seed: int
    turns: list[Turn]
    final_observation: str
    total_return: float
    end_reason: str
    outcome: str | None
    error: str | None = None


def run_episode(env: TextEnv, agent: Agent, seed: int) -> Trajectory:
    """Play one episode of ``env`` with ``agent`` under the same rules as the environment worker.

    The turn limit (``env.max_turns``) always ends the episode; an environment that raises ends it
    with ``end_reason == "error"``. The caller keeps ownership of ``env`` (it is not closed).
    """
    agent.reset(seed)
    episode = Episode(lambda: env, seed, close_when_done=False)
    turns: list[Turn] = []
    observation = episode.first.observation
    while not episode.done:
        action = agent.act(observation)
        result, _ = episode.step(episode.turns, action)
        turns.append(Turn(observation, action, result.reward, result.info))
        observation = result.observation
    final_info = episode.last.info
    return Trajectory(
        seed=seed,
        turns=turns,
        final_observation=observation,
        total_return=episode.total_return,
        end_reason=episode.end_reason,
        outcome=final_info.get("outcome"),
        error=final_info.get("error"),
    )
