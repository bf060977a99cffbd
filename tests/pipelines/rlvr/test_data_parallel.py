"""Two data-parallel actor ranks (gloo) on two CPU slots stay bitwise in sync and train."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import read_run, run_roll


def test_two_actor_ranks_stay_in_sync(tmp_path: Path) -> None:
    run_dir = tmp_path / "dp"
    result = run_roll(
        "run",
        "configs/quickstart.yaml",
        f"output_dir={run_dir}",
        "steps=3",
        "cluster.cpu_slots=2",
        "roles.actor.devices=[0,1]",
        "roles.reward.num_workers=2",
        "checkpoint.export_model=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = read_run(run_dir)
    assert data["run"]["status"] == "completed"
    assert len(data["rollouts"]) == 3 * 16 * 16  # every sample of every step, from both ranks
    ckpt = run_dir / "checkpoints" / "step_000003"
    rank0 = torch.load(ckpt / "actor" / "rank0" / "engine.pt", weights_only=False)["model"]
    rank1 = torch.load(ckpt / "actor" / "rank1" / "engine.pt", weights_only=False)["model"]
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"ranks diverged at {name}"
    assert data["metrics"]["actor/grad_norm"][0][1] > 0


def test_two_deepspeed_zero3_ranks_train_and_export(tmp_path: Path) -> None:
    run_dir = tmp_path / "ds"
    result = run_roll(
        "run",
        "configs/quickstart.yaml",
        f"output_dir={run_dir}",
        "steps=3",
        "cluster.cpu_slots=2",
        "roles.actor.devices=[0,1]",
        "train.engine=deepspeed",
        "train.deepspeed.zero_stage=3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = read_run(run_dir)
    assert data["run"]["status"] == "completed"
    grad_norms = [v for _, v in data["metrics"]["actor/grad_norm"]]
    assert len(grad_norms) == 3 and all(g > 0 for g in grad_norms)
    assert (run_dir / "checkpoints" / "step_000003" / "actor" / "deepspeed").is_dir()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model", local_files_only=True)
    assert sum(p.numel() for p in model.parameters()) > 0 and model.config.hidden_size == 64
