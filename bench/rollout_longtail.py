"""Step time with a long-tailed response length: plain synchronous rollout vs redundancy + async.

    python bench/rollout_longtail.py [--steps 6] [--prompts 16] [--group 4] [--workers 2]

Each prompt gets a target response length drawn from a log-normal distribution (median 12 tokens,
a tail to --max-tokens), the way a few hard prompts make RL batches wait for their longest answers.
Rollout workers are the real RolloutWorker (tiny Qwen2 on CPU) without EOS, stopping each prompt
group at its target length; each decode step is paced to take at least --step-ms, standing in for
a larger model, so the comparison does not hinge on this machine's load. Training is a fixed
--train-s pause followed by a weight sync (the actor's time does not depend on the rollout mode).

Modes (both through schedulers.RolloutScheduler, the same code the rlvr pipeline runs):
  sync:   one chunk per worker, wait for every sample, then train (the default pipeline path);
  async:  --chunk prompt groups per chunk (4), --oversample 0.25 (abort the unfinished tail once
          the batch is full) and async_ratio 1 (the next step's groups generate while the actor
          trains).
Prints per-mode step times and `sync/async step time ratio: X.XX`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roll.controller import Batch, Dispatch, WorkerGroup, register  # noqa: E402
from roll.data import DataConfig, load_rows  # noqa: E402
from roll.engines.base import SamplingParams  # noqa: E402
from roll.engines.weights import state_to_numpy  # noqa: E402
from roll.models import load_model_and_tokenizer, load_tokenizer  # noqa: E402
from roll.models.config import ModelConfig  # noqa: E402
from roll.rewards import RewardConfig  # noqa: E402
from schedulers.rollout_scheduler import RolloutScheduler, SchedulerSettings  # noqa: E402
from workers.reward import RewardWorker  # noqa: E402
from workers.rollout import RolloutWorker  # noqa: E402

MODEL = ModelConfig.model_validate({"source": "tiny", "tiny": {"vocab": "digits"}})


class LongTailRolloutWorker(RolloutWorker):
    """Generates each chunk to the longest target length of its rows (no EOS), paced per step."""

    def __init__(self, rank: int, world_size: int, role: str, *, step_s: float, **kwargs: Any) -> None:
        super().__init__(rank, world_size, role, **kwargs)
        self.engine.eos_ids = [self.engine.model.config.vocab_size + 1]  # never sampled
        self.engine.lean = None  # paced by a hook on the HF forward, which lean decode skips
        self.engine.model.register_forward_pre_hook(lambda *_: time.sleep(step_s))

    @register(Dispatch.RANK_ZERO)
    def generate_chunk(self, batch: Batch) -> Batch:
        full: SamplingParams = batch.meta["sampling"]
        target = max(row["target_len"] for row in batch.non_tensors["row"])
        batch.meta["sampling"] = dataclasses.replace(full, max_new_tokens=target)
        out = super().generate_chunk(batch)
        out.meta["sampling"] = full
        pad = full.max_new_tokens - target  # back to the common width the batch is assembled at
        t = out.tensors
        t["input_ids"] = torch.nn.functional.pad(t["input_ids"], (0, pad), value=self.engine.pad_id)
        for key in ("attention_mask", "response_mask", "rollout_logprobs"):
            t[key] = torch.nn.functional.pad(t[key], (0, pad))
        return out


def make_prompts(seed: int, max_tokens: int):
    rows = load_rows(DataConfig.model_validate({"arithmetic": {"max_operand": 9}}))
    tokenizer = load_tokenizer(MODEL)
    rng = np.random.default_rng(seed)

    def draw(n: int) -> list[tuple[dict, list[int]]]:
        out = []
        for _ in range(n):
            row = dict(rows[int(rng.integers(len(rows)))])
            row["target_len"] = int(np.clip(rng.lognormal(math.log(12), 1.0), 4, max_tokens))
            out.append((row, tokenizer(row["prompt"])["input_ids"]))
        return out

    return draw, tokenizer


def run_mode(name: str, args, rollout: WorkerGroup, reward: WorkerGroup, weights: list) -> list[float]:
    draw, tokenizer = make_prompts(args.seed, args.max_tokens)
    extra = {"groups_per_chunk": args.chunk, "oversample": args.oversample, "async_ratio": 1}
    extra = extra if name == "async" else {}
    settings = SchedulerSettings(
        groups_per_step=args.prompts,
        group_size=args.group,
        sampling=SamplingParams(max_new_tokens=args.max_tokens, temperature=1.0),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **extra,
    )
    scheduler = RolloutScheduler(rollout, reward, settings, draw)
    scheduler.update_weights(weights, 0)
    times = []
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        batch, metrics = scheduler.generate(step)
        time.sleep(args.train_s)  # the actor's train step
        scheduler.update_weights(weights, step)
        times.append(time.perf_counter() - start)
        lengths = batch.tensors["response_mask"].sum(-1).float()
        print(
            f"{name:5s} step {step}: {times[-1]:.2f}s (generate {metrics['scheduler/time_wait_s']:.2f}s, "
            f"longest {int(lengths.max())} tok, aborted {int(metrics['scheduler/aborted'])}, "
            f"staleness max {int(metrics['scheduler/staleness_max'])})",
            flush=True,
        )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--step-ms", type=float, default=4.0)
    parser.add_argument("--train-s", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=4, help="async mode: prompt groups per chunk")
    parser.add_argument("--oversample", type=float, default=0.25, help="async mode: extra groups")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        init = {"model": MODEL, "seed": 0, "threads": 1, "step_s": args.step_ms / 1000}
        rollout = WorkerGroup(
            LongTailRolloutWorker,
            role="rollout",
            actor_options=[{"num_cpus": 0.25}] * args.workers,
            init_kwargs=init,
        )
        reward_cfg = RewardConfig.model_validate({"functions": [{"name": "first_int_match"}]})
        reward = WorkerGroup(
            RewardWorker,
            role="reward",
            actor_options=[{"num_cpus": 0.1}],
            init_kwargs={"reward": reward_cfg, "imports": []},
        )
        model, _ = load_model_and_tokenizer(MODEL)
        weights = [ray.put(state_to_numpy(model))]
        results = {name: run_mode(name, args, rollout, reward, weights) for name in ("sync", "async")}
    finally:
        ray.shutdown()
    # the first step of each mode has no overlap to gain from: report the steady state
    steady = {name: statistics.mean(t[1:]) for name, t in results.items()}
    for name, value in steady.items():
        print(f"{name}: mean step time {value:.3f}s (steps 2..{args.steps})")
    print(f"sync/async step time ratio: {steady['sync'] / steady['async']:.2f}")


if __name__ == "__main__":
    main()
