"""Rollout log-probs equal the training engine's for the same weights; KL is 0 while actor == ref.

The worker classes are plain Python classes (WorkerGroup makes them Ray actors), so they are
exercised here in-process with a real tiny model.
"""

from __future__ import annotations

import pytest
import torch

from pipelines.rlvr.config import RLVRConfig
from pipelines.rlvr.pipeline import build_prompt_batch, encode_prompts
from roll.algos import kl_penalty
from roll.controller import Batch
from roll.data import load_rows
from roll.models import load_tokenizer
from roll.models.config import ModelConfig
from workers.actor import ActorWorker
from workers.reference import ReferenceWorker
from workers.rollout import RolloutWorker


@pytest.fixture(scope="module")
def setup():
    cfg = RLVRConfig.model_validate(
        {
            "pipeline": "rlvr",
            "model": {"source": "tiny", "tiny": {"vocab": "digits"}},
            "data": {"arithmetic": {"max_operand": 9, "template": "{a} + {b} ="}},
            "rollout": {"prompts_per_step": 6, "group_size": 4, "max_new_tokens": 5, "temperature": 0.8},
            "algo": {"kl_coef": 0.1},
            "train": {"lr": 1e-2, "micro_batch_size": 7},
        }
    )
    model: ModelConfig = cfg.model
    tok = load_tokenizer(model)
    rows = load_rows(cfg.data)[:6]
    rows[1] = {**rows[1], "prompt": "7 + 8 = ? 1"}  # a longer prompt → real left padding
    batch = build_prompt_batch(cfg, rows, encode_prompts(rows, tok, None), step=1)
    kw = dict(model=model, seed=0, threads=1)
    rollout = RolloutWorker(0, 1, "rollout", **kw)
    actor = ActorWorker(
        0,
        1,
        "actor",
        train=cfg.train,
        loss_params=cfg.algo.actor_loss_params(5),
        temperature=0.8,
        total_optimizer_steps=4,
        **kw,
    )
    reference = ReferenceWorker(0, 1, "reference", temperature=0.8, micro_batch_size=5, **kw)
    return cfg, batch, rollout, actor, reference


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask).max())


def test_prompts_are_left_padded(setup) -> None:
    _, batch, rollout, *_ = setup
    out = rollout.generate(batch)
    first_col = out.tensors["attention_mask"][:, 0]
    assert first_col.min() == 0 and first_col.max() == 1  # some rows padded, some not


def test_rollout_logprobs_match_training_engine(setup) -> None:
    _, batch, rollout, actor, _ = setup
    out = rollout.generate(batch)
    mask = out.tensors["response_mask"].float()
    assert mask.sum() > len(batch)  # several tokens per response on average
    train_lp = actor.compute_log_probs(out).tensors["old_logprobs"]
    assert masked_max_diff(train_lp, out.tensors["rollout_logprobs"], mask) < 1e-5


def test_kl_zero_while_actor_equals_reference(setup) -> None:
    _, batch, rollout, actor, reference = setup
    out = rollout.generate(batch)
    mask = out.tensors["response_mask"].float()
    actor_lp = actor.compute_log_probs(out).tensors["old_logprobs"]
    ref_lp = reference.compute_ref_log_probs(out).tensors["ref_logprobs"]
    # rows sharing a prompt run it once per micro-batch (roll.engines.logprobs), so other
    # micro-batches mean other kernel shapes: equal up to float rounding, not bitwise
    assert masked_max_diff(actor_lp, ref_lp, mask) < 1e-6
    assert float((kl_penalty(actor_lp, ref_lp, "k3") * mask).abs().max()) < 1e-9


def test_train_then_sync_keeps_logprobs_in_agreement(setup) -> None:
    cfg, batch, rollout, actor, reference = setup
    out = rollout.generate(batch)
    rewards = torch.arange(len(out), dtype=torch.float32) % 3
    extra = Batch.from_dict(
        tensors={
            "old_logprobs": out.tensors["rollout_logprobs"],
            "advantages": rewards - rewards.mean(),
            "ref_logprobs": reference.compute_ref_log_probs(out).tensors["ref_logprobs"],
        }
    )
    metrics = actor.train_step(out.select("input_ids", "attention_mask", "response_mask").union(extra))
    assert metrics["loss/kl"] == 0.0  # first and only optimizer step: actor == reference
    assert metrics["actor/grad_norm"] > 0
    rollout.engine.update_weights(actor.engine.state_dict_numpy())
    out2 = rollout.generate(batch)
    mask = out2.tensors["response_mask"].float()
    train_lp = actor.compute_log_probs(out2).tensors["old_logprobs"]
    assert masked_max_diff(train_lp, out2.tensors["rollout_logprobs"], mask) < 1e-5
    ref_lp = reference.compute_ref_log_probs(out2).tensors["ref_logprobs"]
    assert float(((kl_penalty(train_lp, ref_lp) * mask).sum())) > 0  # weights moved


def test_train_step_without_old_logprobs_equals_one_with_recomputed_ones(setup) -> None:
    """train.single_update: the actor's detached log-probs stand in for a recompute."""
    cfg, batch, rollout, _, reference = setup
    out = rollout.generate(batch)
    rewards = torch.arange(len(out), dtype=torch.float32) % 2
    base = out.select("input_ids", "attention_mask", "response_mask").union(
        Batch.from_dict(
            tensors={
                "advantages": rewards - rewards.mean(),
                "ref_logprobs": reference.compute_ref_log_probs(out).tensors["ref_logprobs"],
            }
        )
    )
    results = []
    for recompute in (True, False):
        actor = ActorWorker(
            0,
            1,
            "actor",
            model=cfg.model,
            seed=0,
            threads=1,
            train=cfg.train,
            loss_params=cfg.algo.actor_loss_params(5),
            temperature=0.8,
            total_optimizer_steps=4,
        )
        step_batch = base.union(actor.compute_log_probs(out)) if recompute else base
        assert ("old_logprobs" in step_batch.tensors) is recompute
        metrics = actor.train_step(step_batch)
        results.append((metrics, actor.compute_log_probs(out).tensors["old_logprobs"]))
    (with_old, lp_a), (without, lp_b) = results
    assert without["actor/clip_frac"] == 0.0 and abs(without["actor/ratio_mean"] - 1.0) < 1e-12
    for key in ("loss/policy", "loss/kl", "actor/grad_norm"):
        assert abs(with_old[key] - without[key]) < 1e-6, key
    mask = out.tensors["response_mask"].float()
    assert masked_max_diff(lp_a, lp_b, mask) < 1e-6  # the same update
