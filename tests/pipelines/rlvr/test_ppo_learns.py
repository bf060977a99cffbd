"""PPO with a critic (GAE, KL in the reward) learns the quickstart task."""

from __future__ import annotations

from pathlib import Path

from helpers import read_run, run_roll


def test_ppo_with_critic_learns(tmp_path: Path) -> None:
    run_dir = tmp_path / "ppo"
    result = run_roll(
        "run",
        "configs/rlvr/ppo_tiny_arithmetic.yaml",
        f"output_dir={run_dir}",
        "checkpoint.export_model=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_run(run_dir)["metrics"]
    reward = [v for _, v in metrics["reward/mean"]]
    start, end = sum(reward[:5]) / 5, sum(reward[-10:]) / 10
    assert start < 0.3 and end >= 0.8, (start, end)
    explained = [v for _, v in metrics["critic/explained_variance"]]
    # the critic learned something about the returns: in mid-run it explains a good part of their
    # variance (near the end it need not: once the policy saturates the returns barely vary)
    mid = explained[len(explained) // 4 : 3 * len(explained) // 4]
    assert sum(mid) / len(mid) > 0.2, mid
    assert (run_dir / "checkpoints" / "step_000200" / "critic" / "rank0" / "engine.pt").is_file()
