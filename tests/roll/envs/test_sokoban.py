"""Sokoban rules on hand-made rooms, seeded reverse-play generation and the BFS agent."""

from __future__ import annotations

import pytest

from roll.envs import EnvConfig, make_env, run_episode, scripted_agent
from roll.envs.sokoban import Level, Sokoban, SokobanParams, solve

# # wall, _ floor, T target, B box, X box on target, P player, S player on target
ROOM = [
    "######",
    "#____#",
    "#_PB_#",
    "#___T#",
    "#____#",
    "######",
]


def room(layout: list[str] = ROOM, **params) -> Sokoban:
    env = Sokoban(SokobanParams(layout=layout, **params), max_turns=30)
    env.reset(seed=0)
    return env


def test_first_observation_explains_the_format_and_shows_the_board() -> None:
    observation = Sokoban(SokobanParams(layout=ROOM)).reset(seed=0)
    assert "<action>up</action>" in observation and "B box" in observation
    assert observation.endswith("\n".join(ROOM))


def test_walking_into_a_wall_does_not_move() -> None:
    env = room()
    env.step("up")
    result = env.step("<action>up</action>")
    assert (result.reward, result.terminated, result.info["moved"]) == (0.0, False, False)
    assert env.level.player == (1, 2) and "blocked" in result.observation


def test_a_box_against_a_wall_or_another_box_does_not_move() -> None:
    env = room(["#####", "#PBB#", "#__T#", "#__T#", "#####"])
    result = env.step("right")
    assert result.info == {"action": "right", "moved": False, "pushed": False}
    env = room(["#####", "#_PB#", "#__T#", "#####"])
    assert env.step("right").info["moved"] is False
    assert env.level.boxes == {(1, 3)}


def test_pushing_the_box_onto_the_target_solves() -> None:
    env = room()
    result = env.step("right")  # box (2,3) -> (2,4)
    assert (result.reward, result.terminated, result.info["pushed"]) == (0.0, False, True)
    env.step("up")
    env.step("right")
    result = env.step("<action>down</action>")  # box (2,4) -> (3,4): on the target
    assert (result.reward, result.terminated, result.info["outcome"]) == (1.0, True, "solved")
    assert "X" in result.observation


def test_a_box_pushed_into_a_corner_is_stuck_and_the_episode_goes_on() -> None:
    env = room()
    for move in ("up", "right", "down", "down", "left", "down", "right"):  # box ends at (4,4)
        result = env.step(move)
    assert env.level.boxes == {(4, 4)} and result.info["pushed"] and not result.done
    result = env.step("right")
    assert result.info["moved"] is False and result.reward == 0.0 and not result.done
    assert solve(env.level) is None  # a cornered box off its target can never be solved


def test_step_penalty_and_invalid_replies() -> None:
    env = room(step_penalty=-0.01, invalid_penalty=-0.2, max_invalid=2)
    assert env.step("left").reward == -0.01
    first = env.step("push the box")
    assert (first.reward, first.terminated, first.info) == (-0.2, False, {"invalid": True})
    second = env.step("<action>north</action>")
    assert second.terminated and second.info["outcome"] == "invalid_limit"


def test_layout_is_checked() -> None:
    with pytest.raises(ValueError, match="as many boxes"):
        SokobanParams(layout=["####", "#PB#", "####"])
    with pytest.raises(ValueError, match="exactly one player"):
        SokobanParams(layout=["#####", "#_BT#", "#####"])


def test_generated_levels_are_deterministic_and_unsolved_at_the_start() -> None:
    env = make_env(EnvConfig(name="sokoban"))
    assert env.reset(seed=9) == env.reset(seed=9)
    assert len({env.reset(seed=s) for s in range(10)}) > 5
    assert not env.level.solved


@pytest.mark.parametrize(
    ("params", "max_turns"),
    [({}, 20), ({"width": 7, "height": 7, "boxes": 2, "inner_walls": 2}, 40)],
)
def test_scripted_agent_solves_20_seeds(params: dict, max_turns: int) -> None:
    env = make_env(EnvConfig(name="sokoban", max_turns=max_turns, params=params))
    for seed in range(20):
        trajectory = run_episode(env, scripted_agent("sokoban"), seed)
        assert (trajectory.outcome, trajectory.total_return) == ("solved", 1.0), (params, seed)


def test_level_parse_and_render_round_trip() -> None:
    layout = ["#####", "#SXB#", "#_T_#", "#####"]
    assert Level.parse(layout).render(4, 5) == "\n".join(layout)
