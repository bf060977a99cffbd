"""The shared environment rules: registry and config checks, action parsing, the turn limit,
exception isolation and idempotent turns (Episode), and run_episode."""

from __future__ import annotations

import pytest
from faulty_env import FaultyEnv, FaultyParams
from pydantic import ValidationError

from roll.envs import (
    EnvConfig,
    Episode,
    RandomAgent,
    TextEnv,
    env_names,
    make_env,
    parse_choice,
    random_agent,
    run_episode,
)
from roll.errors import ConfigError


def faulty(max_turns: int = 5, **params) -> TextEnv:
    return make_env(EnvConfig(name="test_faulty", max_turns=max_turns, params=params))


def test_registry_lists_builtins_and_rejects_unknown_names() -> None:
    assert {"frozen_lake", "sokoban", "tool_use"} <= set(env_names())
    with pytest.raises(ValidationError, match="unknown environment 'chess'.*frozen_lake.*sokoban.*tool_use"):
        EnvConfig(name="chess")
    with pytest.raises(ConfigError, match="unknown environment 'chess'"):
        make_env(EnvConfig.model_construct(name="chess", max_turns=3, params={}))
    assert isinstance(make_env(EnvConfig(name="frozen_lake")), TextEnv)


def test_env_config_checks_params_against_the_env() -> None:
    cfg = EnvConfig(name="frozen_lake", params={"size": 5})
    assert cfg.params["size"] == 5 and cfg.params["slippery"] is False  # defaults filled in
    with pytest.raises(ValidationError, match="params.sise: Extra inputs are not permitted"):
        EnvConfig(name="frozen_lake", params={"sise": 5})
    with pytest.raises(ValidationError, match="classic maps exist for size 4 and 8"):
        EnvConfig(name="frozen_lake", params={"map": "classic", "size": 5})
    with pytest.raises(ValidationError, match="extra"):
        EnvConfig(name="frozen_lake", max_turn=3)
    for name, field in EnvConfig.model_fields.items():
        assert field.description, name


def test_parse_choice_accepts_tags_or_the_bare_word() -> None:
    moves = ("left", "right")
    assert parse_choice("<action>left</action>", moves) == "left"
    assert parse_choice("I think <action>left</action>... no: <ACTION> Right </ACTION>", moves) == "right"
    assert parse_choice("  Left. ", moves) == "left"
    assert parse_choice("go left", moves) is None
    assert parse_choice("<action>jump</action>", moves) is None


def test_turn_limit_truncates() -> None:
    trajectory = run_episode(faulty(max_turns=3, fail_in="never"), RandomAgent(["x"]), seed=0)
    assert len(trajectory.turns) == 3
    assert (trajectory.end_reason, trajectory.outcome, trajectory.total_return) == (
        "truncated",
        "turn_limit",
        1.5,
    )


@pytest.mark.parametrize(
    ("fail_in", "turns", "where"),
    [
        ("init", 0, "RuntimeError in reset"),
        ("reset", 0, "RuntimeError in reset"),
        ("step", 2, "ZeroDivisionError in step 1"),
        ("return", 2, "TypeError in step 1"),
    ],
)
def test_env_exceptions_end_the_trajectory_with_reward_zero(fail_in: str, turns: int, where: str) -> None:
    env = FaultyEnv(FaultyParams(fail_in=fail_in), max_turns=5) if fail_in != "init" else None
    episode = Episode(lambda: env if env is not None else faulty(fail_in="init"), seed=3)
    while not episode.done:
        episode.step(episode.turns, "x")
    last = episode.last
    assert episode.end_reason == "error" and episode.turns == turns  # the failed step is a turn
    assert last.reward == 0.0 and last.truncated and not last.terminated
    assert last.info["outcome"] == "error" and last.info["error"].startswith(where)
    if env is not None and fail_in != "reset":
        assert env.closed  # the failed env is closed


def test_a_failing_close_does_not_fail_the_step() -> None:
    episode = Episode(lambda: faulty(max_turns=1, fail_in="close"), seed=0)
    result, _ = episode.step(0, "x")
    assert result.truncated and result.info == {"outcome": "turn_limit"}


def test_episode_turns_are_idempotent_and_ordered() -> None:
    env = FaultyEnv(FaultyParams(fail_in="never"), max_turns=4)
    episode = Episode(lambda: env, seed=1)
    first, replayed = episode.step(0, "a")
    again, replayed_again = episode.step(0, "something else")
    assert (replayed, replayed_again) == (False, True) and again is first and env.turn == 1
    with pytest.raises(ValueError, match="turn 3 is out of order.*next turn is 1"):
        episode.step(3, "a")
    for turn in range(1, 4):
        episode.step(turn, "a")
    with pytest.raises(ValueError, match="ended after 4 turns \\(turn_limit\\)"):
        episode.step(4, "a")
    assert episode.step(2, "a")[1] is True  # old turns still replay


def test_run_episode_with_random_agents_ends_every_builtin_env() -> None:
    for name in ("frozen_lake", "sokoban", "tool_use"):
        env = make_env(EnvConfig(name=name, max_turns=8))
        for seed in range(5):
            trajectory = run_episode(env, random_agent(name), seed)
            assert trajectory.end_reason in ("terminated", "truncated") and 1 <= len(trajectory.turns) <= 8
            assert trajectory.total_return == pytest.approx(sum(t.reward for t in trajectory.turns))
            assert trajectory.error is None
