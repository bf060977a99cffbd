"""EnvironmentWorker on a real local Ray: trajectories routed to the rank that holds them, the
scripted agent reaching the goal through the worker group, idempotent retries, isolated failures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch
from pydantic import Field

from roll.config.base import ConfigBase
from roll.controller import Batch, WorkerGroup
from roll.envs import EnvConfig, StepResult, register_env, scripted_agent
from workers.environment import EnvironmentWorker, make_reset_batch, make_step_batch

LAKE = EnvConfig(name="frozen_lake", max_turns=12, params={"size": 4})


class ExplodingParams(ConfigBase):
    """Parameters of ``test_exploding``."""

    at_turn: int = Field(1, description="The turn whose step raises.")


@register_env("test_exploding", params=ExplodingParams)
class ExplodingEnv:
    """Raises in step ``at_turn``; imported into the workers by ``imports=[this module]``."""

    def __init__(self, params: ExplodingParams, *, max_turns: int) -> None:
        self.at_turn, self.max_turns, self.turn = params.at_turn, max_turns, 0

    def reset(self, seed: int) -> str:
        return "ready"

    def step(self, action_text: str) -> StepResult:
        if self.turn == self.at_turn:
            raise RuntimeError("segfault-ish")
        self.turn += 1
        return StepResult(f"turn {self.turn}")

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def envs() -> Iterator[WorkerGroup]:
    # Workers import roll, workers and this module from the checkout (see test_dispatch_ray.py).
    paths = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).parent)]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(paths))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    group = WorkerGroup(
        EnvironmentWorker,
        role="environment",
        actor_options=[{"num_cpus": 0.25}] * 2,
        init_kwargs={"threads": 4, "imports": [Path(__file__).stem]},
    )
    yield group
    group.kill()
    ray.shutdown()


def play(group: WorkerGroup, out: Batch, agent_for: dict) -> dict[str, float]:
    """Alternate agent actions and step_batch until every trajectory is done; returns the returns."""
    returns = dict.fromkeys(out.non_tensors["traj_id"], 0.0)
    while not bool(out.tensors["done"].all()):
        live = out[~out.tensors["done"]]
        actions = [
            agent_for[t].act(o)
            for t, o in zip(live.non_tensors["traj_id"], live.non_tensors["observation"], strict=True)
        ]
        out = group.step_batch(make_step_batch(live, actions))
        assert out.non_tensors["traj_id"] == live.non_tensors["traj_id"]  # caller's row order
        assert set(out.non_tensors["status"]) == {"ok"}
        for traj_id, reward in zip(out.non_tensors["traj_id"], out.tensors["reward"].tolist(), strict=True):
            returns[traj_id] += reward
    return returns


def test_eight_frozen_lake_trajectories_reach_the_goal(envs: WorkerGroup) -> None:
    batch = make_reset_batch(LAKE, seeds=[1, 2, 3, 4], group_size=2, prefix="s1")
    out = envs.reset_batch(batch)
    assert out.non_tensors["traj_id"] == batch.non_tensors["traj_id"]
    assert out.non_tensors["env_rank"] == [0, 0, 1, 1, 0, 0, 1, 1]  # tasks round-robin, groups kept
    assert out.tensors["turn"].tolist() == [0] * 8 and not out.tensors["done"].any()
    obs = out.non_tensors["observation"]
    assert obs[0] == obs[1] and obs[0] != obs[2]  # one level per task
    agents = {t: scripted_agent("frozen_lake") for t in out.non_tensors["traj_id"]}
    returns = play(envs, out, agents)
    assert returns == dict.fromkeys(batch.non_tensors["traj_id"], 1.0)
    stats = envs.stats()
    assert [s["finished"] for s in stats] == [4, 4] and sum(s["errors"] for s in stats) == 0
    assert envs.release(list(returns)) == 8 and sum(s["finished"] for s in envs.stats()) == 0


def test_retried_calls_replay_and_rows_are_routed_whatever_their_order(envs: WorkerGroup) -> None:
    batch = make_reset_batch(LAKE, seeds=[7, 8], group_size=2, prefix="s2")
    out = envs.reset_batch(batch)
    again = envs.reset_batch(batch)
    assert set(again.non_tensors["status"]) == {"replayed"}
    assert again.non_tensors["observation"] == out.non_tensors["observation"]
    reordered = out[[3, 0, 2, 1]]
    agent = scripted_agent("frozen_lake")  # safe moves: no trajectory ends on a hole
    step = make_step_batch(reordered, [agent.act(o) for o in reordered.non_tensors["observation"]])
    first = envs.step_batch(step)
    retry = envs.step_batch(step)  # e.g. the driver timed out and sent the call again
    assert first.non_tensors["traj_id"] == reordered.non_tensors["traj_id"]
    assert set(first.non_tensors["status"]) == {"ok"} and set(retry.non_tensors["status"]) == {"replayed"}
    for key in ("reward", "done", "turn"):
        assert torch.equal(first.tensors[key], retry.tensors[key])
    assert first.non_tensors["observation"] == retry.non_tensors["observation"]
    assert first.tensors["turn"].tolist() == [1] * 4
    nxt = envs.step_batch(make_step_batch(first, [agent.act(o) for o in first.non_tensors["observation"]]))
    assert nxt.tensors["turn"].tolist() == [2] * 4 and set(nxt.non_tensors["status"]) == {"ok"}
    envs.release(out.non_tensors["traj_id"])
    lost = envs.step_batch(make_step_batch(nxt, ["down"] * 4))
    assert set(lost.non_tensors["status"]) == {"lost"} and bool(lost.tensors["done"].all())


def test_a_raising_env_does_not_take_the_worker_down(envs: WorkerGroup) -> None:
    boom = EnvConfig(name="test_exploding", max_turns=5)
    batch = Batch.concat(
        [make_reset_batch(boom, seeds=[0], group_size=2, prefix="s3"), make_reset_batch(LAKE, [5], 2, "s3")]
    )
    out = envs.reset_batch(batch)
    for _ in range(2):
        out = envs.step_batch(make_step_batch(out, ["<action>left</action>"] * 4))
    assert out.tensors["done"].tolist() == [True, True, False, False]
    assert out.tensors["reward"].tolist()[:2] == [0.0, 0.0]
    assert out.non_tensors["info"][0]["error"] == "RuntimeError in step 1: segfault-ish"
    assert sum(s["errors"] for s in envs.stats()) == 2
    assert envs.step_batch(make_step_batch(out[2:], ["left"] * 2)).non_tensors["status"] == ["ok"] * 2
    stray = make_step_batch(out[2:], ["left"] * 2)
    stray.non_tensors["env_rank"] = [5, 5]
    with pytest.raises(ValueError, match="env_rank \\[5\\] is outside this group of 2"):
        envs.step_batch(stray)
