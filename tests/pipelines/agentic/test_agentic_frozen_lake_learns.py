"""The shipped FrozenLake job, run as a user runs it, learns: success from ~0 to well above chance.

Measured (seed 0, 60 steps, ~50 s of training on 2 cores): success 0.0 over the first 5 steps,
0.38 over the last 10; invalid-action share 0.51 → 0.0. The thresholds leave a wide margin.
"""

from __future__ import annotations

from pathlib import Path

from agentic_helpers import JOB, read_run, run_roll, series


def test_frozen_lake_success_rate_rises(tmp_path: Path) -> None:
    run_dir = tmp_path / "lake"
    result = run_roll("run", JOB, f"output_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step 1/40 | reward/mean")  # a progress line per step
    assert "env/success_rate" in lines[0] and "perf/tokens_per_s" in lines[0]
    assert any(line.startswith("done: 40 steps") for line in lines)

    data = read_run(run_dir)
    assert data["run"]["status"] == "completed"
    success = series(data, "env/success_rate")
    assert len(success) == 40
    start, end = sum(success[:5]) / 5, sum(success[-10:]) / 10
    assert start <= 0.05, f"the random policy should start near 0 success, got {start:.3f}"
    assert end >= 0.2, f"success should rise to >= 0.2, got {end:.3f} (start {start:.3f})"
    invalid = series(data, "env/invalid_action_share")
    assert sum(invalid[:3]) / 3 > 0.4 and sum(invalid[-10:]) / 10 < 0.1  # it learns the action format
    for key in ("reward/mean", "env/turns_mean", "time/generate", "time/env", "time/train", "time/step"):
        assert len(series(data, key)) == 40, key
    assert series(data, "env/error_count") == [0.0] * 40

    last = [row for row in data["rollouts"] if row["step"] == 40]
    assert len(last) == 64  # 8 tasks x 8 trajectories
    assert all(row["data"]["turns"] == len(row["data"]["actions"]) for row in last)
    assert {row["data"]["seed"] for row in last} == set(range(312, 320))  # step 40's 8 fresh maps
    assert (run_dir / "model" / "config.json").is_file()
