"""Real workers for scheduler tests: tiny-model rollout workers and rule reward workers on a local
Ray, and a prompt source over the arithmetic data set."""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import reward_plugins  # noqa: F401  (registers the test rewards in the driver too)

from roll.controller import WorkerGroup
from roll.data import DataConfig, load_rows
from roll.engines.base import SamplingParams
from roll.models import load_tokenizer
from roll.models.config import ModelConfig
from roll.rewards import RewardConfig
from schedulers.rollout_scheduler import RolloutScheduler, SchedulerSettings
from workers.reward import RewardWorker
from workers.rollout import RolloutWorker

MODEL = ModelConfig.model_validate({"source": "tiny", "tiny": {"vocab": "digits"}})
DATA = DataConfig.model_validate({"arithmetic": {"max_operand": 4, "template": "{a} + {b} ="}})


class PacedRolloutWorker(RolloutWorker):
    """A rollout worker that never emits EOS (responses run to max_new_tokens unless aborted or
    stopped) and whose decode steps take at least ``step_s`` seconds: long generations on demand,
    whatever the machine's speed."""

    def __init__(self, rank: int, world_size: int, role: str, *, step_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(rank, world_size, role, **kwargs)
        self.engine.eos_ids = [self.engine.model.config.vocab_size + 1]  # an id it never samples
        if step_s:
            self.engine.lean = None  # paced by a hook on the HF forward, which lean decode skips
            self.engine.model.register_forward_pre_hook(lambda *_: time.sleep(step_s))


def start_rollout(n: int, max_restarts: int = 0, step_s: float | None = None) -> WorkerGroup:
    options = {"num_cpus": 0.25, "max_restarts": max_restarts, "max_task_retries": 0}
    kwargs = {"model": MODEL, "seed": 0, "threads": 1}
    cls = RolloutWorker if step_s is None else PacedRolloutWorker
    if step_s is not None:
        kwargs["step_s"] = step_s
    return WorkerGroup(cls, role="rollout", actor_options=[options] * n, init_kwargs=kwargs)


def start_reward(n: int = 1, max_restarts: int = 0, reward: str = "sched_test_parity") -> WorkerGroup:
    options = {"num_cpus": 0.1, "max_restarts": max_restarts, "max_task_retries": 2 if max_restarts else 0}
    cfg = RewardConfig.model_validate({"functions": [{"name": reward}]})
    init = {"reward": cfg, "imports": ["reward_plugins"]}
    return WorkerGroup(RewardWorker, role="reward", actor_options=[options] * n, init_kwargs=init)


class Prompts:
    """draw(n): the next n arithmetic prompts, tokenised, cycling through the data set."""

    def __init__(self) -> None:
        self.rows = load_rows(DATA)
        self.tokenizer = load_tokenizer(MODEL)
        self.drawn = 0

    def __call__(self, n: int) -> list[tuple[dict[str, Any], list[int]]]:
        out = []
        for _ in range(n):
            row = self.rows[self.drawn % len(self.rows)]
            self.drawn += 1
            out.append((row, self.tokenizer(row["prompt"])["input_ids"]))
        return out


def settings(**overrides: Any) -> SchedulerSettings:
    tokenizer = load_tokenizer(MODEL)
    base = dict(
        groups_per_step=4,
        group_size=4,
        sampling=SamplingParams(max_new_tokens=3, temperature=1.0),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        seed=0,
    )
    return SchedulerSettings(**{**base, **overrides})


def make_scheduler(rollout: WorkerGroup, reward: WorkerGroup, **overrides: Any) -> RolloutScheduler:
    scheduler = RolloutScheduler(rollout, reward, settings(**overrides), Prompts())
    return scheduler


def initial_weights(rollout: WorkerGroup) -> list:
    """Weights as the actor would publish them: the rollout model's own initial state."""
    from roll.engines.weights import state_to_numpy  # noqa: PLC0415
    from roll.models import load_model_and_tokenizer  # noqa: PLC0415

    model, _ = load_model_and_tokenizer(MODEL)
    return [ray.put(state_to_numpy(model))]


def worker_pids(group: WorkerGroup) -> list[int]:
    return [info["pid"] for info in group.ping()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
