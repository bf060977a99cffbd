"""roles.rollout.devices.same_process: the rollout samples from the actor's own weights, in the
actor's process, and the job trains exactly as with a separate rollout process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import read_run, run_roll

from pipelines.rlvr.config import RLVRConfig
from pipelines.rlvr.pipeline import build_prompt_batch, encode_prompts
from roll.controller import Batch
from roll.data import load_rows
from roll.models import load_tokenizer
from workers.actor_rollout import SHARED_WEIGHTS, ActorRolloutWorker
from workers.rollout import StaleWeightsError

SAME = "roles.rollout.devices={colocate_with: actor, same_process: true}"


def test_same_process_trains_exactly_like_separate_processes(tmp_path: Path) -> None:
    """Same seed, same tokens, same losses: only where the rollout runs differs (quickstart has a
    KL reference, so the actor still switches with the reference on the shared slot)."""
    runs = {}
    for name, extra in (("separate", []), ("same", [SAME])):
        run_dir = tmp_path / name
        result = run_roll(
            "run",
            "configs/quickstart.yaml",
            f"output_dir={run_dir}",
            "steps=4",
            "checkpoint.every=0",
            "checkpoint.save_final=false",
            "checkpoint.export_model=false",
            *extra,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = read_run(run_dir)
    sep, same = runs["separate"], runs["same"]
    assert same["run"]["status"] == "completed"
    key = lambda r: r["sample_id"]  # noqa: E731
    assert [r["response"] for r in sorted(same["rollouts"], key=key)] == [
        r["response"] for r in sorted(sep["rollouts"], key=key)
    ]
    for metric in ("reward/mean", "loss/policy", "actor/grad_norm", "actor/kl"):
        a = [v for _, v in sep["metrics"][metric]]
        b = [v for _, v in same["metrics"][metric]]
        assert len(a) == 4 and a == pytest.approx(b, abs=1e-6), metric
    assert max(v for _, v in sep["metrics"]["actor/grad_norm"]) > 0
    # the offload switch no longer moves a rollout copy of the weights each step
    moved_sep = sum(v for _, v in sep["metrics"]["offload/bytes_moved"])
    moved_same = sum(v for _, v in same["metrics"]["offload/bytes_moved"])
    assert 0 < moved_same < moved_sep


def _cfg(**over) -> RLVRConfig:
    data = {
        "pipeline": "rlvr",
        "model": {"source": "tiny", "tiny": {"vocab": "digits"}},
        "data": {"arithmetic": {"max_operand": 4}},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 3},
        "roles": {"rollout": {"devices": {"colocate_with": "actor", "same_process": True}}},
        "train": {"lr": 5e-2},
        "algo": {"kl_coef": 0.0},
    }
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v}
    return RLVRConfig.model_validate(data)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"rollout": {"engine": "vllm"}}, "rollout.engine: hf"),
        ({"train": {"engine": "deepspeed"}}, "train.engine: torch"),
        ({"train": {"lora": {"rank": 4}}}, "no train.lora"),
        (
            {"roles": {"rollout": {"devices": {"colocate_with": "reference", "same_process": True}}}},
            "colocate_with: actor",
        ),
        (
            {"roles": {"reference": {"devices": {"colocate_with": "actor", "same_process": True}}}},
            "only the rollout can share the actor's process",
        ),
    ],
)
def test_unsupported_combinations_are_refused(over, message) -> None:
    with pytest.raises(ValueError, match="same_process") as err:
        _cfg(**over)
    assert message in str(err.value)


def test_rollout_sees_each_train_step_and_refuses_an_unannounced_version() -> None:
    cfg = _cfg()
    assert cfg.rollout_in_actor
    worker = ActorRolloutWorker(
        0,
        1,
        "actor",
        model=cfg.model,
        train=cfg.train,
        loss_params=cfg.algo.actor_loss_params(3),
        temperature=1.0,
        total_optimizer_steps=4,
        seed=0,
        threads=1,
    )
    assert worker.publish_weights() == SHARED_WEIGHTS and worker.update_weights(SHARED_WEIGHTS, 0) == 0
    tok = load_tokenizer(cfg.model)
    rows = load_rows(cfg.data)[:2]
    prompts = build_prompt_batch(cfg, rows, encode_prompts(rows, tok, None), step=1)
    inputs = ("input_ids", "attention_mask", "response_mask")
    gen = prompts.union(worker.generate(prompts))
    before = worker.compute_log_probs(gen.select(*inputs)).tensors["old_logprobs"]
    torch.testing.assert_close(gen.tensors["rollout_logprobs"], before, atol=1e-5, rtol=0)

    adv = torch.tensor([1.0, -1.0, 0.5, -0.5] * 2)
    batch = gen.select(*inputs).union(Batch.from_dict(tensors={"advantages": adv}))
    metrics = worker.train_step(batch)
    assert metrics["actor/grad_norm"] > 0
    meta = {**prompts.meta, "seed": 1, "policy_version": 0}
    chunk = Batch(dict(prompts.tensors), dict(prompts.non_tensors), meta)
    with pytest.raises(StaleWeightsError, match="needs 0"):  # the weights moved: version unknown
        worker.generate_chunk(chunk)
    worker.update_weights(SHARED_WEIGHTS, 1)
    # the rollout samples from the trained weights with no sync: its log-probs are the actor's now
    again = prompts.union(worker.generate(prompts))
    after = worker.compute_log_probs(again.select(*inputs)).tensors["old_logprobs"]
    torch.testing.assert_close(again.tensors["rollout_logprobs"], after, atol=1e-5, rtol=0)
    moved = worker.compute_log_probs(gen.select(*inputs)).tensors["old_logprobs"]
    assert (moved - before).abs().max() > 1e-3  # the training step changed the shared weights


def test_roll_plan_says_the_rollout_shares_the_actor_process() -> None:
    result = run_roll("plan", "configs/quickstart.yaml", SAME)
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.lstrip("│ ").startswith("rollout"))
    assert "actor (same process)" in row
    reference = next(line for line in result.stdout.splitlines() if line.lstrip("│ ").startswith("reference"))
    assert "same process" not in reference
