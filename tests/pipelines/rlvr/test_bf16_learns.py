"""bf16 on CPU: bf16 rollout/reference weights, bf16 autocast over fp32 master weights in the actor.
Learning still works (a shortened quickstart: 80 steps; reward ~0.08 → ~0.5 there)."""

from __future__ import annotations

from pathlib import Path

from helpers import read_run, run_roll


def test_bf16_quickstart_learns(tmp_path: Path) -> None:
    run_dir = tmp_path / "bf16"
    result = run_roll(
        "run",
        "configs/quickstart.yaml",
        f"output_dir={run_dir}",
        "steps=80",
        "model.dtype=bf16",
        "train.dtype=bf16",
        "algo.recompute_old_logprobs=true",
        "checkpoint.export_model=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reward = [v for _, v in read_run(run_dir)["metrics"]["reward/mean"]]
    start, end = sum(reward[:5]) / 5, sum(reward[-10:]) / 10
    assert start < 0.3 and end >= 0.4 and end - start >= 0.25, (start, end)
    kl = [v for _, v in read_run(run_dir)["metrics"]["actor/kl"]]
    assert abs(kl[0]) < 1e-3  # bf16 rollout vs fp32-master actor: close, not bitwise
