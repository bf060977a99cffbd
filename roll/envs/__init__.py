"""Text environments for multi-turn agents: the API, the built-in games, test agents, the pool.

- :mod:`roll.envs.base`: ``TextEnv`` (reset/step/close), ``StepResult``, ``EnvConfig``,
  ``@register_env`` / ``make_env``;
- built-in environments: ``frozen_lake``, ``sokoban``, ``tool_use`` (calculator + city lookup);
- :mod:`roll.envs.episode`: the rules every environment shares (turn limit, error isolation,
  idempotent turns); :mod:`roll.envs.pool`: many trajectories by id on a thread pool (what
  ``workers/environment.py`` serves);
- :mod:`roll.envs.agents`: random and scripted agents and ``run_episode`` for tests;
- :mod:`roll.envs.trajectory`: multi-turn token trajectories (generated tokens trained on,
  observation tokens masked) and their packing into train tensors.
"""

from roll.envs.agents import Agent, RandomAgent, Trajectory, Turn, random_agent, run_episode, scripted_agent
from roll.envs.base import (
    EnvConfig,
    StepResult,
    TextEnv,
    env_names,
    find_tags,
    make_env,
    parse_choice,
    register_env,
)
from roll.envs.episode import Episode
from roll.envs.pool import EnvPool, EnvReply, ResetRequest, StepRequest
from roll.envs.trajectory import TokenTrajectory, pack_trajectories

__all__ = [
    "Agent",
    "EnvConfig",
    "EnvPool",
    "EnvReply",
    "Episode",
    "RandomAgent",
    "ResetRequest",
    "StepRequest",
    "StepResult",
    "TextEnv",
    "TokenTrajectory",
    "Trajectory",
    "Turn",
    "env_names",
    "find_tags",
    "make_env",
    "pack_trajectories",
    "parse_choice",
    "random_agent",
    "register_env",
    "run_episode",
    "scripted_agent",
]
