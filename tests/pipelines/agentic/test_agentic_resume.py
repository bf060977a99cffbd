"""Checkpoint and resume: a run stopped after step 2 and resumed to step 4 plays and learns exactly
what an uninterrupted 4-step run does (same task seeds, same sampled actions, same losses)."""

from __future__ import annotations

from pathlib import Path

from agentic_helpers import JOB, read_run, run_roll, series

SMALL = [
    "rollout.tasks_per_step=4",
    "rollout.group_size=4",
    "checkpoint.keep_last=null",
    "checkpoint.every=2",
]


def trace(run_dir: Path, steps: range) -> dict:
    data = read_run(run_dir)
    rollouts = sorted(
        (row["step"], row["sample_id"], tuple(row["data"]["actions"]), row["reward"])
        for row in data["rollouts"]
        if row["step"] in steps
    )
    loss = [v for s, v in data["metrics"]["loss/policy"] if s in steps]
    return {"rollouts": rollouts, "loss": loss, "steps": len(series(data, "reward/mean"))}


def test_resume_replays_the_uninterrupted_run(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = run_roll("run", JOB, f"output_dir={straight}", "steps=4", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_roll("run", JOB, f"output_dir={resumed}", "steps=2", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (resumed / "checkpoints" / "step_000002" / "driver.json").is_file()

    result = run_roll("run", JOB, f"output_dir={resumed}", "steps=4", *SMALL, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith("step 3/4")

    expected, got = trace(straight, range(3, 5)), trace(resumed, range(3, 5))
    assert got["steps"] == expected["steps"] == 4  # no step lost or logged twice
    assert len(got["rollouts"]) == 32 and got["rollouts"] == expected["rollouts"]
    assert got["loss"] == expected["loss"]
