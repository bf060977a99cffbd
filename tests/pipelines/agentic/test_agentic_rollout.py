"""The multi-turn rollout with real parts in this process: a tiny transformers model behind the
rollout worker, FrozenLake in the environment worker's pool (the worker classes, called directly).

Checks that observation tokens are context with mask 0, that the behaviour log-probs recorded turn
by turn equal a teacher-forced forward over the packed trajectory, and that an environment raising
ends only its own trajectories."""

from __future__ import annotations

import pytest
import torch
from pydantic import Field

from pipelines.agentic.config import AgenticConfig
from pipelines.agentic.metrics import episode_metrics
from pipelines.agentic.pipeline import StageTimer, trajectory_advantages
from pipelines.agentic.rollout import encode, episode_tensors, play_episodes
from roll.config.base import ConfigBase
from roll.controller import Batch
from roll.engines.logprobs import response_logprobs
from roll.envs import StepResult, make_env, register_env
from roll.envs.trajectory import pack_trajectories
from workers.environment import EnvironmentWorker
from workers.rollout import RolloutWorker

TINY = {"source": "tiny", "tiny": {"max_position_embeddings": 256, "vocab": "frozen_lake"}}


class FlakyParams(ConfigBase):
    """Parameters of ``test_agentic_flaky``."""

    fail_odd_seeds: bool = Field(True, description="Raise in step 1 of episodes with an odd seed.")


@register_env("test_agentic_flaky", params=FlakyParams)
class FlakyEnv:
    """Shows a one-cell board; its step 1 raises for odd seeds."""

    def __init__(self, params: FlakyParams, *, max_turns: int) -> None:
        self.params, self.max_turns, self.seed, self.turn = params, max_turns, 0, 0

    def reset(self, seed: int) -> str:
        self.seed, self.turn = seed, 0
        return "P _ G"

    def step(self, action_text: str) -> StepResult:
        self.turn += 1
        if self.turn == 2 and self.seed % 2 and self.params.fail_odd_seeds:
            raise RuntimeError("the simulator crashed")
        return StepResult("_ P G", reward=0.5)

    def close(self) -> None:
        pass


def config(env: dict, **rollout) -> AgenticConfig:
    return AgenticConfig(
        pipeline="agentic",
        model=TINY,
        env=env,
        rollout={"tasks_per_step": 2, "group_size": 3, "max_new_tokens": 2, **rollout},
    )


def workers(cfg: AgenticConfig) -> dict:
    return {
        "rollout": RolloutWorker(0, 1, "rollout", model=cfg.model, seed=0, threads=1),
        "environment": EnvironmentWorker(0, 1, "environment", threads=2),
    }


def test_observations_are_masked_context_and_logprobs_match_a_training_forward() -> None:
    cfg = config({"name": "frozen_lake", "max_turns": 4, "params": {"render": "cells"}})
    groups = workers(cfg)
    tokenizer = groups["rollout"].tokenizer
    timer = StageTimer()
    episodes = play_episodes(cfg, groups, tokenizer, step=3, timer=timer)
    assert {"time/reset", "time/generate", "time/env"} <= set(timer.times)
    assert groups["environment"].stats()["live"] == 0  # released
    assert [e.seed for e in episodes] == [4, 4, 4, 5, 5, 5]  # step 3: seeds (3 - 1) * 2 + 0, 1
    assert [e.task for e in episodes] == [0, 0, 0, 1, 1, 1]

    for e in episodes:
        assert 1 <= e.turns <= 4 and len(e.actions) == e.turns
        # replay the environment with the same seed and actions: the mask-0 tokens are exactly
        # its observations after each non-final action, encoded with the observation template
        env = make_env(cfg.env)
        assert e.tokens.prompt_ids == encode(tokenizer, env.reset(e.seed), first=True)
        expected_obs: list[int] = []
        for turn, action in enumerate(e.actions):
            result = env.step(action)
            if turn + 1 < e.turns:
                text = cfg.rollout.observation_template.format(observation=result.observation)
                expected_obs += encode(tokenizer, text, first=False)
        observed = [tok for tok, m in zip(e.tokens.ids, e.tokens.loss_mask, strict=True) if m == 0]
        assert observed == expected_obs
        # one run of generated tokens (1..max_new_tokens) per turn, the last turn's at the end
        runs = "".join(map(str, e.tokens.loss_mask)).split("0")
        actions = [r for r in runs if r]
        assert len(actions) == e.turns and all(1 <= len(r) <= 2 for r in actions)
        assert e.tokens.loss_mask[-1] == 1

    packed = pack_trajectories([e.tokens for e in episodes], tokenizer.pad_token_id)
    model = groups["rollout"].engine.model
    with torch.no_grad():
        teacher = response_logprobs(
            model, packed["input_ids"], packed["attention_mask"], packed["response_mask"].shape[1]
        )
    mask = packed["response_mask"]
    assert mask.sum() > 0 and (~mask & packed["attention_mask"][:, -mask.shape[1] :].bool()).sum() > 0
    assert torch.allclose(teacher[mask], packed["old_logprobs"][mask], atol=1e-4)

    batch = Batch.from_dict(tensors={**packed, **episode_tensors(episodes)})
    batch = batch.union(trajectory_advantages(cfg, batch))
    metrics = episode_metrics(episodes, batch)
    assert metrics["env/turns_mean"] == pytest.approx(sum(e.turns for e in episodes) / 6)
    invalid = sum(e.invalid_actions for e in episodes) / sum(e.turns for e in episodes)
    assert metrics["env/invalid_action_share"] == pytest.approx(invalid)
    assert (batch.tensors["advantages"][~mask] == 0).all()


def test_an_environment_that_raises_ends_only_its_trajectories() -> None:
    cfg = config({"name": "test_agentic_flaky", "max_turns": 3}, env_seed_offset=10)
    groups = workers(cfg)
    tokenizer = groups["rollout"].tokenizer
    episodes = play_episodes(cfg, groups, tokenizer, step=1, timer=StageTimer())
    healthy, broken = episodes[:3], episodes[3:]  # seeds 10 and 11
    for e in healthy:
        assert (e.outcome, e.turns, e.error, e.env_return) == ("turn_limit", 3, None, 1.5)
    for e in broken:
        assert e.outcome == "error" and e.turns == 2 and not e.success
        assert "RuntimeError in step 1: the simulator crashed" in e.error
    packed = pack_trajectories([e.tokens for e in episodes], tokenizer.pad_token_id)
    batch = Batch.from_dict(tensors={**packed, **episode_tensors(episodes)})
    batch = batch.union(trajectory_advantages(cfg, batch))
    metrics = episode_metrics(episodes, batch)
    assert metrics["env/error_count"] == 3.0
    assert metrics["env/outcome/error"] == 0.5 and metrics["env/truncated_share"] == 0.5


def test_context_limit_ends_trajectories_before_they_overflow() -> None:
    # bos + 16 cells, + 1 action + 16 cells (34 tokens, + 1 to generate: fits in 40); a second
    # observation would make 51: the trajectory ends after its second action
    cfg = config(
        {
            "name": "frozen_lake",
            "max_turns": 8,
            "params": {"render": "cells", "layout": ["SFFF", "FFFF", "FFFF", "FFFG"]},
        },
        max_context_tokens=40,
        max_new_tokens=1,
    )
    groups = workers(cfg)
    episodes = play_episodes(cfg, groups, groups["rollout"].tokenizer, step=1, timer=StageTimer())
    for e in episodes:
        assert len(e.tokens.context) <= 40
        if e.outcome == "context_limit":
            assert e.turns == 2 and e.error is None
    assert any(e.outcome == "context_limit" for e in episodes)
