"""Every algorithm takes a real training step through the pipeline's own functions (in-process
workers, tiny model): advantages have the algorithm's shape and the policy moves the right way."""

from __future__ import annotations

import pytest
import torch

from pipelines.rlvr.config import RLVRConfig
from pipelines.rlvr.pipeline import advantages, build_prompt_batch, encode_prompts
from roll.algos.registry import ALGORITHMS
from roll.controller import Batch
from roll.data import load_rows
from roll.models import load_tokenizer
from workers.actor import ActorWorker
from workers.critic import CriticWorker
from workers.reference import ReferenceWorker
from workers.rollout import RolloutWorker

TRAIN_INPUTS = ("input_ids", "attention_mask", "response_mask")


def make_cfg(name: str) -> RLVRConfig:
    return RLVRConfig.model_validate(
        {
            "pipeline": "rlvr",
            "model": {"source": "tiny", "tiny": {"vocab": "digits"}},
            "data": {"arithmetic": {"max_operand": 4}},
            "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 3},
            "algo": {"name": name, "kl_coef": 0.05, "entropy_coef": 0.01},
            "train": {"lr": 1e-3},
            "critic": {"lr": 1e-2},
        }
    )


@pytest.fixture(scope="module")
def rollout_batch():
    cfg = make_cfg("grpo")
    tok = load_tokenizer(cfg.model)
    rows = load_rows(cfg.data)[:4]
    batch = build_prompt_batch(cfg, rows, encode_prompts(rows, tok, None), step=1)
    rollout = RolloutWorker(0, 1, "rollout", model=cfg.model, seed=0, threads=1)
    out = batch.union(rollout.generate(batch))
    # a fixed, non-degenerate reward pattern within every group
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0] * 4)
    extra = {"rewards": rewards, "old_logprobs": out.tensors["rollout_logprobs"]}
    return out.union(Batch.from_dict(tensors=extra))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_algorithm_step(name: str, rollout_batch: Batch) -> None:
    cfg = make_cfg(name)
    kw = dict(model=cfg.model, seed=0, threads=1)
    actor = ActorWorker(
        0,
        1,
        "actor",
        train=cfg.train,
        loss_params=cfg.algo.actor_loss_params(3),
        temperature=1.0,
        total_optimizer_steps=2,
        **kw,
    )
    batch = rollout_batch
    reference = ReferenceWorker(0, 1, "reference", temperature=1.0, micro_batch_size=64, **kw)
    batch = batch.union(reference.compute_ref_log_probs(batch.select(*TRAIN_INPUTS)))
    if name == "ppo":
        critic = CriticWorker(0, 1, "critic", train=cfg.critic, value_clip=0.2, total_optimizer_steps=2, **kw)
        batch = batch.union(critic.compute_values(batch.select(*TRAIN_INPUTS)))
        assert batch.tensors["values"].abs().max() == 0  # zero-initialised value head
    batch = batch.union(advantages(cfg, batch, cfg.algo.kl_coef))
    adv, mask = batch.tensors["advantages"], batch.tensors["response_mask"].float()
    assert adv.shape == mask.shape and torch.all(adv[mask == 0] == 0)
    first = adv[:, 0]
    assert first[0] > 0 and first[1] < 0  # the rewarded sample is pushed up, the others down

    before = actor.compute_log_probs(batch.select(*TRAIN_INPUTS)).tensors["old_logprobs"]
    keys = [*TRAIN_INPUTS, "old_logprobs", "advantages", "ref_logprobs"]
    train_batch = batch.select(*keys)
    train_batch.meta["kl_coef"] = cfg.algo.kl_coef
    metrics = actor.train_step(train_batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert metrics["actor/grad_norm"] > 0 and "loss/entropy" in metrics
    after = actor.compute_log_probs(batch.select(*TRAIN_INPUTS)).tensors["old_logprobs"]
    seq_gain = ((after - before) * mask).sum(-1)
    assert seq_gain[0] > seq_gain[1]  # rewarded response became likelier relative to a wrong one
    if name == "ppo":
        critic_metrics = critic.train_step(batch.select(*TRAIN_INPUTS, "values", "returns"))
        assert critic_metrics["critic/loss"] > 0
        moved = critic.compute_values(batch.select(*TRAIN_INPUTS)).tensors["values"]
        assert moved.abs().max() > 0
