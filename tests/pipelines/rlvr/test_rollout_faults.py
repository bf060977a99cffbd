"""A rollout worker killed (-9) past its restart limit: the run fails with a clear message and a
checkpoint of the last finished step, and `--resume` from it completes the run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import ROOT, env, read_run, roll_cmd

ARGS = [
    "steps=4",
    "cluster.cpu_slots=2",
    "roles.rollout.devices=[1]",  # its own slot: a dead rollout worker is the scheduler's problem
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.worker_max_restarts=0",
    "checkpoint.export_model=false",
    "imports=[rollout_killer_plugin]",
    "reward.functions=[{name: kill_rollout_once}]",
]


def run(run_dir: Path, marker: Path, *extra: str) -> subprocess.CompletedProcess:
    environ = {
        **env(),
        "ROLL_TEST_KILL_MARKER": str(marker),
        "ROLL_TEST_KILL_STEP": "3",
        "ROLL_TEST_SAMPLES_PER_STEP": "16",
    }
    cmd = roll_cmd("run", "configs/quickstart.yaml", f"output_dir={run_dir}", *ARGS, *extra)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=environ, timeout=600)


def test_rollout_worker_lost_past_restarts_fails_clearly_and_resumes(tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "killed"
    first = run(run_dir, marker)
    assert marker.read_text() == "1"  # the plugin found and killed exactly one rollout worker
    assert first.returncode != 0
    assert "every rollout worker is gone" in first.stderr and "--resume" in first.stderr
    data = read_run(run_dir)
    assert data["run"]["status"] == "failed"
    # step 3 was scored before the kill landed on the idle worker; step 4 could not start
    last_done = max(step for step, _ in data["metrics"]["reward/mean"])
    assert (run_dir / "checkpoints" / f"step_{last_done:06d}" / "MANIFEST.json").is_file()

    second = run(run_dir, marker, "--resume")  # the marker exists: no second kill
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.splitlines()[0].startswith(f"step {last_done + 1}/4")
    data = read_run(run_dir)
    assert data["run"]["status"] == "completed"
    assert sorted({row["step"] for row in data["rollouts"]}) == [1, 2, 3, 4]
    assert len(data["rollouts"]) == 4 * 16  # no step lost or stored twice
    assert os.path.isdir(run_dir / "checkpoints" / "step_000004")
