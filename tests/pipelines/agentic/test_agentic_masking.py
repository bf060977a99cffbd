"""Multi-turn masking and trajectory advantages, checked by hand on small examples."""

from __future__ import annotations

import pytest
import torch

from pipelines.agentic.config import AgenticConfig
from pipelines.agentic.pipeline import trajectory_advantages
from roll.controller import Batch
from roll.envs.trajectory import TokenTrajectory, pack_trajectories

PAD = 0


def two_trajectories() -> list[TokenTrajectory]:
    # trajectory A: prompt [5 6 7], action [20 21], observation [8 9], action [22]
    a = TokenTrajectory([5, 6, 7])
    a.add_action([20, 21], [-0.5, -0.25])
    a.add_observation([8, 9])
    a.add_action([22], [-1.0])
    # trajectory B: prompt [5 6], action [23], then the episode ended
    b = TokenTrajectory([5, 6])
    b.add_action([23], [-2.0])
    return [a, b]


def test_pack_masks_observations_and_keeps_them_in_context() -> None:
    packed = pack_trajectories(two_trajectories(), PAD)
    # prompts left-padded to 3, the rest right-padded to 5
    assert packed["input_ids"].tolist() == [
        [5, 6, 7, 20, 21, 8, 9, 22],
        [PAD, 5, 6, 23, PAD, PAD, PAD, PAD],
    ]
    assert packed["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 1],  # observation tokens are attended to (context) ...
        [0, 1, 1, 1, 0, 0, 0, 0],
    ]
    assert packed["response_mask"].tolist() == [
        [True, True, False, False, True],  # ... but get no loss
        [True, False, False, False, False],
    ]
    assert packed["old_logprobs"].tolist() == [[-0.5, -0.25, 0.0, 0.0, -1.0], [-2.0, 0.0, 0.0, 0.0, 0.0]]


def test_context_is_prompt_then_turns() -> None:
    a = two_trajectories()[0]
    assert a.context == [5, 6, 7, 20, 21, 8, 9, 22]
    assert a.generated_tokens == 3


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty first observation"):
        TokenTrajectory([])
    with pytest.raises(ValueError, match="2 tokens but 1 log-probs"):
        TokenTrajectory([1]).add_action([3, 4], [-0.1])
    with pytest.raises(ValueError, match="at least one trajectory"):
        pack_trajectories([], PAD)


def test_trajectory_returns_give_group_advantages_on_generated_tokens_only() -> None:
    cfg = AgenticConfig(pipeline="agentic")  # grpo, std-normalised
    # task 0: returns 1, 0, 0 (one solved); task 1: returns -0.2, -0.2, -0.2 (a tie: no signal)
    trajs = []
    for _ in range(6):
        t = TokenTrajectory([5])
        t.add_action([20], [-0.1])
        t.add_observation([8, 9])
        t.add_action([21], [-0.2])
        trajs.append(t)
    packed = pack_trajectories(trajs, PAD)
    batch = Batch.from_dict(
        tensors={
            **packed,
            "rewards": torch.tensor([1.0, 0.0, 0.0, -0.2, -0.2, -0.2]),
            "group_ids": torch.tensor([0, 0, 0, 1, 1, 1]),
        }
    )
    adv = trajectory_advantages(cfg, batch).tensors["advantages"]
    # group 0: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    solved, failed = (2 / 3) / (1 / 3) ** 0.5, -(1 / 3) / (1 / 3) ** 0.5  # 1.1547, -0.5774
    expected_row = {0: solved, 1: failed, 2: failed, 3: 0.0, 4: 0.0, 5: 0.0}
    for row, value in expected_row.items():
        # the two generated tokens carry the trajectory's advantage; the observation tokens 0
        assert adv[row].tolist() == pytest.approx([value, 0.0, 0.0, value], abs=1e-5)
