"""Rule rewards and the reward worker's isolation of a raising reward function."""

from __future__ import annotations

import pytest

from roll.controller import Batch
from roll.errors import ConfigError
from roll.rewards import RewardConfig, get_reward, register_reward
from workers.reward import RewardWorker


def test_rule_rewards() -> None:
    row = {"answer": "7"}
    assert get_reward("exact_match")("  7 ", row) == 1.0
    assert get_reward("exact_match")("7 7", row) == 0.0
    assert get_reward("first_int_match")("3 + 4 = 7", row) == 0.0  # first integer is 3
    assert get_reward("first_int_match")("it is 7, yes 8", row) == 1.0
    assert get_reward("first_int_match")("no digits", row) == 0.0
    assert get_reward("format")(" 12 ", row) == 1.0
    assert get_reward("format")("12 apples", row) == 0.0


def test_unknown_reward_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown reward function 'nope'.*exact_match"):
        get_reward("nope")


@register_reward("test_explodes_on_b")
def explodes_on_b(response: str, row: dict) -> float:
    if "b" in response:
        raise RuntimeError("cannot score b")
    return 1.0


def test_raising_reward_scores_zero_and_records_error() -> None:
    cfg = RewardConfig.model_validate(
        {"functions": [{"name": "test_explodes_on_b", "weight": 2.0}, {"name": "exact_match", "weight": 0.5}]}
    )
    worker = RewardWorker(0, 1, "reward", reward=cfg, imports=[])
    batch = Batch.from_dict(
        non_tensors={
            "response_text": ["a", "b", "7"],
            "row": [{"answer": "a"}, {"answer": "b"}, {"answer": "7"}],
        }
    )
    out = worker.compute_rewards(batch)
    assert out.tensors["rewards"].tolist() == [2.5, 0.5, 2.5]
    assert out.tensors["reward/test_explodes_on_b"].tolist() == [1.0, 0.0, 1.0]
    errors = out.non_tensors["reward_error"]
    assert errors[0] == "" and "RuntimeError: cannot score b" in errors[1]
