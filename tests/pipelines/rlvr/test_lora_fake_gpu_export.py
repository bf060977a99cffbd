"""A LoRA job on a cluster with a (fake) GPU, then `roll export model` from its checkpoint.

Ray places the roles by GPU bundles (the device plan is a GPU plan); on this CPU machine torch
still computes on the CPU. With LoRA the actor serves as its own reference (adapters disabled).
"""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import read_run, run_roll
from transformers import AutoModelForCausalLM


def test_lora_job_on_fake_gpu_and_export(tmp_path: Path) -> None:
    run_dir = tmp_path / "lora"
    result = run_roll(
        "run",
        "configs/quickstart.yaml",
        f"output_dir={run_dir}",
        "steps=3",
        "cluster.num_gpus=1",
        "train.lora={rank: 4, alpha: 8}",
        "train.lr=0.05",
        "checkpoint.export_model=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = read_run(run_dir)
    kl = dict(data["metrics"]["actor/kl"])
    assert kl[1] == 0.0 and kl[3] > 0  # the actor-as-reference starts identical, then they part

    plan = run_roll("plan", "configs/quickstart.yaml", "cluster.num_gpus=1")
    assert "1 GPU" in plan.stdout, plan.stdout

    out = tmp_path / "exported"
    exported = run_roll("export", "model", str(run_dir), "--out", str(out))
    assert exported.returncode == 0, exported.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert not any("lora" in name for name in model.state_dict())
    state = torch.load(
        run_dir / "checkpoints" / "step_000003" / "actor" / "rank0" / "engine.pt", weights_only=False
    )["model"]
    base_q = state["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, base_q)  # adapters merged in
