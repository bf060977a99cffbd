"""LoRA actor: adapters only train; the reference is the same model with adapters off; syncs and
exports carry merged weights that plain transformers loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.rlvr.config import RLVRConfig
from pipelines.rlvr.pipeline import build_prompt_batch, encode_prompts
from roll.controller import Batch
from roll.data import load_rows
from roll.models import load_tokenizer
from roll.models.lora import merged_state_dict
from workers.actor import ActorWorker
from workers.reference import ReferenceWorker
from workers.rollout import RolloutWorker


@pytest.fixture(scope="module")
def setup():
    cfg = RLVRConfig.model_validate(
        {
            "pipeline": "rlvr",
            "model": {"source": "tiny", "tiny": {"vocab": "digits"}},
            "data": {"arithmetic": {"max_operand": 9}},
            "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
            "algo": {"kl_coef": 0.1},
            "train": {"lr": 5e-2, "lora": {"rank": 4, "alpha": 8}},
        }
    )
    tok = load_tokenizer(cfg.model)
    rows = load_rows(cfg.data)[:4]
    batch = build_prompt_batch(cfg, rows, encode_prompts(rows, tok, None), step=1)
    kw = dict(model=cfg.model, seed=0, threads=1)
    actor = ActorWorker(
        0,
        1,
        "actor",
        train=cfg.train,
        loss_params=cfg.algo.actor_loss_params(4),
        temperature=1.0,
        total_optimizer_steps=3,
        **kw,
    )
    reference = ReferenceWorker(0, 1, "reference", temperature=1.0, micro_batch_size=64, **kw)
    rollout = RolloutWorker(0, 1, "rollout", **kw)
    return batch, actor, reference, rollout


def test_only_adapters_train(setup) -> None:
    _, actor, *_ = setup
    trainable = {n for n, p in actor.engine.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(len(g["params"]) for g in actor.engine.optimizer.param_groups) == len(trainable)


def test_reference_is_base_model_and_training_moves_policy_only(setup) -> None:
    batch, actor, reference, rollout = setup
    out = rollout.generate(batch)
    base = reference.compute_ref_log_probs(out).tensors["ref_logprobs"]
    assert torch.equal(actor.compute_ref_log_probs(out).tensors["ref_logprobs"], base)
    assert torch.equal(actor.compute_log_probs(out).tensors["old_logprobs"], base)  # B = 0 at start
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 4)
    extra = Batch.from_dict(
        tensors={"old_logprobs": base, "ref_logprobs": base, "advantages": rewards - rewards.mean()}
    )
    for _ in range(3):
        metrics = actor.train_step(out.select("input_ids", "attention_mask", "response_mask").union(extra))
    assert metrics["actor/grad_norm"] > 0
    mask = out.tensors["response_mask"]
    moved = actor.compute_log_probs(out).tensors["old_logprobs"]
    assert float(((moved - base).abs() * mask).max()) > 1e-3  # the policy changed ...
    assert torch.equal(actor.compute_ref_log_probs(out).tensors["ref_logprobs"], base)  # ... the ref did not

    # the merged sync keeps the rollout in agreement with the trained actor
    state = actor.engine.state_dict_numpy()
    assert set(state) == set(reference.model.state_dict())  # plain HF names
    rollout.engine.update_weights(state)
    out2 = rollout.generate(batch)
    lp = actor.compute_log_probs(out2).tensors["old_logprobs"]
    m2 = out2.tensors["response_mask"]
    assert float(((lp - out2.tensors["rollout_logprobs"]).abs() * m2).max()) < 1e-5


def test_export_loads_with_plain_transformers(setup, tmp_path: Path) -> None:
    batch, actor, _, rollout = setup
    actor.save_pretrained(str(tmp_path / "export"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export", local_files_only=True)
    assert not any("lora" in k for k in plain.state_dict())
    out = rollout.generate(batch)
    ids, attn = out.tensors["input_ids"], out.tensors["attention_mask"]
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = actor.engine.model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
        got = plain(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    merged = merged_state_dict(actor.engine.model)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(value, merged[name], atol=1e-6, rtol=0)
