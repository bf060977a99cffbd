"""Kill -9 after a checkpoint, resume in a fresh process: bitwise the same as an uninterrupted run.

Also: a truncated newest checkpoint is refused in favour of the previous complete one, and the
replay from there is bitwise the same too (fp32 on CPU is deterministic for a fixed thread count).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import ROOT, env, read_run, roll_cmd, run_roll
from safetensors.torch import load_file

ARGS = [
    "steps=6",
    "checkpoint.every=2",
    "checkpoint.keep_last=null",
    "imports=[slow_reward_plugin]",
    "reward.functions=[{name: slow_first_int_match}]",
]


def run_and_kill_after_checkpoint(run_dir: Path, step: int) -> None:
    proc = subprocess.Popen(
        roll_cmd("run", "configs/quickstart.yaml", f"output_dir={run_dir}", *ARGS),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    marker = run_dir / "checkpoints" / f"step_{step:06d}" / "MANIFEST.json"
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, with no cleanup
    proc.wait()
    assert not (run_dir / "checkpoints" / "step_000006").exists(), "killed too late to test resume"


def trace(data: dict) -> dict:
    by_step: dict[int, list] = {}
    for row in data["rollouts"]:
        by_step.setdefault(row["step"], []).append((row["sample_id"], row["response"], row["reward"]))
    metrics = data["metrics"]
    return {
        "rollouts": {s: sorted(v) for s, v in by_step.items()},
        "loss": metrics["loss/policy"],
        "grad_norm": metrics["actor/grad_norm"],
        "kl": metrics["actor/kl"],
    }


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    result = run_roll("run", "configs/quickstart.yaml", f"output_dir={run_dir}", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, read_run(run_dir)


def assert_same_run(run_dir: Path, ref_dir: Path, ref: dict) -> None:
    data = read_run(run_dir)
    assert data["run"]["status"] == "completed" and data["run"]["resumed_count"] == 1
    assert trace(data) == trace(ref)  # sample ids, responses, rewards, losses, grad norms: exact
    assert sorted(trace(data)["rollouts"]) == [1, 2, 3, 4, 5, 6]
    assert data["n_metric_rows"] == ref["n_metric_rows"]  # no duplicate rows after the replay
    final, expected = (
        load_file(run_dir / "model" / "model.safetensors"),
        load_file(ref_dir / "model" / "model.safetensors"),
    )
    assert final.keys() == expected.keys()
    for name in expected:
        assert final[name].equal(expected[name]), name


def test_resume_after_sigkill_is_bitwise_identical(reference_run, tmp_path: Path) -> None:
    ref_dir, ref = reference_run
    run_dir = tmp_path / "run"
    run_and_kill_after_checkpoint(run_dir, step=4)
    assert read_run(run_dir)["run"]["status"] == "interrupted"  # not "running" forever
    result = run_roll("run", "configs/quickstart.yaml", f"output_dir={run_dir}", *ARGS, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith("step 5/6")
    assert_same_run(run_dir, ref_dir, ref)


def test_truncated_checkpoint_falls_back_to_previous(reference_run, tmp_path: Path) -> None:
    ref_dir, ref = reference_run
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_000006")  # as if killed after step 4 ...
    shutil.rmtree(run_dir / "model")  # ... before the export
    engine = run_dir / "checkpoints" / "step_000004" / "actor" / "rank0" / "engine.pt"
    engine.write_bytes(engine.read_bytes()[:100])  # a torn write
    result = run_roll("run", "configs/quickstart.yaml", f"output_dir={run_dir}", *ARGS, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step_000004 is incomplete" in result.stderr and "step_000002" in result.stderr
    assert result.stdout.splitlines()[0].startswith("step 3/6")
    assert_same_run(run_dir, ref_dir, ref)
