"""FrozenLake's ``render: cells`` observations and the ``frozen_lake`` word vocabulary that covers them."""

from __future__ import annotations

from roll.envs import EnvConfig, make_env, run_episode, scripted_agent
from roll.models import build_tokenizer

CELLS = EnvConfig(name="frozen_lake", max_turns=12, params={"render": "cells"})


def test_cells_observation_is_the_board_as_words() -> None:
    env = make_env(CELLS)
    first = env.reset(seed=3)
    assert first == "P _ _ _\n_ _ _ O\n_ _ O _\nO _ _ G"
    assert env.step("right").observation == "_ P _ _\n_ _ _ O\n_ _ O _\nO _ _ G"
    invalid = env.step("jump")
    assert invalid.info["invalid"] and invalid.reward == -0.1
    assert invalid.observation == "_ P _ _\n_ _ _ O\n_ _ O _\nO _ _ G"  # did not move


def test_every_cells_observation_is_in_the_vocabulary_and_round_trips() -> None:
    tokenizer = build_tokenizer("frozen_lake")
    assert len(tokenizer) == 12
    env = make_env(CELLS)
    for seed in range(20):
        words = env.reset(seed).split()
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and len(ids) == 16
        assert tokenizer.decode(ids) == " ".join(words)
    for move in ("left", "down", "right", "up"):
        (token,) = tokenizer(move, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode([token]) == move


def test_the_scripted_agent_reads_cells_boards() -> None:
    wins = [run_episode(make_env(CELLS), scripted_agent("frozen_lake"), seed).outcome for seed in range(10)]
    assert wins == ["goal"] * 10
