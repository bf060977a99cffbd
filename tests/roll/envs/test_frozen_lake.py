"""FrozenLake rules on hand-made maps, seeded generation, slipping and the BFS agent."""

from __future__ import annotations

import random

import pytest

from roll.envs import EnvConfig, RandomAgent, make_env, run_episode, scripted_agent
from roll.envs.frozen_lake import CLASSIC_MAPS, FrozenLake, FrozenLakeParams, generate_map

# S start, F ice, H hole, G goal
LAYOUT = ["SFH", "FFF", "HFG"]


def lake(**params) -> FrozenLake:
    env = FrozenLake(FrozenLakeParams(layout=LAYOUT, **params), max_turns=20)
    env.reset(seed=0)
    return env


def test_first_observation_explains_the_format_and_shows_the_board() -> None:
    observation = FrozenLake(FrozenLakeParams(layout=LAYOUT)).reset(seed=0)
    assert "<action>left</action>" in observation and "<action>up</action>" in observation
    assert observation.endswith("P_O\n___\nO_G")


def test_the_edge_stops_the_player_without_penalty() -> None:
    env = lake()
    for move in ("up", "left"):
        result = env.step(f"<action>{move}</action>")
        assert (result.reward, result.terminated, result.truncated) == (0.0, False, False)
        assert result.info == {"action": move, "moved": None} and "hit the edge" in result.observation
    assert env.player == (0, 0)


def test_falling_into_a_hole_ends_with_zero() -> None:
    env = lake()
    env.step("right")
    result = env.step("<action>right</action>")
    assert (result.reward, result.terminated, result.truncated) == (0.0, True, False)
    assert result.info["outcome"] == "hole" and "fell into a hole" in result.observation


def test_reaching_the_goal_gives_one() -> None:
    env = lake()
    rewards = [env.step(f"<action>{m}</action>").reward for m in ("down", "right", "down")]
    result = env.step("right")
    assert rewards == [0.0, 0.0, 0.0]
    assert (result.reward, result.terminated, result.info["outcome"]) == (1.0, True, "goal")
    assert result.observation.endswith("O_P")


def test_invalid_replies_cost_the_penalty_and_end_after_max_invalid() -> None:
    env = lake(invalid_penalty=-0.25, max_invalid=2)
    first = env.step("I would like to go north-west")
    assert (first.reward, first.terminated, first.info) == (-0.25, False, {"invalid": True})
    assert env.player == (0, 0) and "Invalid reply" in first.observation
    second = env.step("<action>jump</action>")
    assert (second.reward, second.terminated) == (-0.25, True)
    assert second.info == {"invalid": True, "outcome": "invalid_limit"}


def test_the_turn_limit_truncates_a_wandering_player() -> None:
    env = make_env(EnvConfig(name="frozen_lake", max_turns=3))
    trajectory = run_episode(env, RandomAgent(["<action>left</action>"]), seed=0)
    assert [turn.reward for turn in trajectory.turns] == [0.0, 0.0, 0.0]
    assert (trajectory.end_reason, trajectory.outcome) == ("truncated", "turn_limit")


def test_generated_maps_are_deterministic_per_seed() -> None:
    env = make_env(EnvConfig(name="frozen_lake", params={"size": 6}))
    assert env.reset(seed=5) == env.reset(seed=5)
    assert len({env.reset(seed=s) for s in range(10)}) > 5
    rows = generate_map(5, 0.6, random.Random(7))
    assert rows == generate_map(5, 0.6, random.Random(7)) and rows[0][0] == "S" and rows[-1][-1] == "G"


@pytest.mark.parametrize(
    "params",
    [{}, {"size": 8}, {"size": 6, "frozen_prob": 0.6}, {"map": "classic"}, {"map": "classic", "size": 8}],
)
def test_scripted_agent_solves_20_seeds(params: dict) -> None:
    env = make_env(EnvConfig(name="frozen_lake", max_turns=40, params=params))
    for seed in range(20):
        trajectory = run_episode(env, scripted_agent("frozen_lake"), seed)
        assert (trajectory.outcome, trajectory.total_return) == ("goal", 1.0), (params, seed)


def test_classic_map_is_gyms() -> None:
    env = FrozenLake(FrozenLakeParams(map="classic"))
    env.reset(seed=0)
    assert env.rows == CLASSIC_MAPS[4]


def test_slipping_is_reproducible_from_the_seed() -> None:
    def play(seed: int) -> list[str]:
        env = FrozenLake(FrozenLakeParams(size=8, slippery=True), max_turns=30)
        env.reset(seed)
        observations = []
        while len(observations) < 4 and not (observations and "Game over" in observations[-1]):
            observations.append(env.step("right").observation)
        return observations

    assert play(3) == play(3)
    slips = [obs for seed in range(6) for obs in play(seed) if "slipped" in obs]
    assert slips, "a slippery lake should slip sometimes"
