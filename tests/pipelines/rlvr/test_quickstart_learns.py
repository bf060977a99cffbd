"""The quickstart job, run exactly as a user runs it, learns: reward from near chance to >= 0.8."""

from __future__ import annotations

from pathlib import Path

from helpers import read_run, run_roll


def test_quickstart_learns(tmp_path: Path) -> None:
    run_dir = tmp_path / "qs"
    result = run_roll("run", "configs/quickstart.yaml", f"output_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step 1/250 | reward/mean")  # a progress line per step
    assert "actor/kl" in lines[0] and "perf/tokens_per_s" in lines[0] and "time/step" in lines[0]
    summary = next(line for line in lines if line.startswith("done: 250 steps"))
    assert "reward/mean" in summary

    data = read_run(run_dir)
    assert data["run"]["status"] == "completed"
    reward = [v for _, v in data["metrics"]["reward/mean"]]
    assert len(reward) == 250
    start, end = sum(reward[:5]) / 5, sum(reward[-10:]) / 10
    assert start < 0.3, f"a random policy should start near chance, got {start:.3f}"
    assert end >= 0.8, f"reward should reach 0.8, got {end:.3f} (start {start:.3f})"
    kl = dict(data["metrics"]["actor/kl"])
    assert kl[1] == 0.0 and kl[250] > 0  # actor == reference at step 1, then they part
    assert (run_dir / "model" / "config.json").is_file()  # exported HF folder
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
