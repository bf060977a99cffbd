"""`roll jobs` on an embedded run (no cluster): `roll run` in the background, `roll jobs list` and
`logs` while it trains, `roll jobs stop` (SIGTERM to the driver that announced itself in the run
store → status 'stopped'), then `roll jobs resume`, which continues from the checkpoint in this
process to the last step with each step's metrics stored once."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

import roll
from roll.cli.main import app as cli_app
from roll.errors import StateError
from roll.jobs.manage import run_logs
from roll.jobs.runstore import RunStore

REPO = Path(roll.__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "pipelines" / "rlvr" / "slow_reward_plugin.py"
JOB = """\
pipeline: rlvr
name: local
steps: 5
output_dir: runs/local
imports: [slow_reward_plugin]
cluster: {num_cpus: 2, cpu_slots: 1}
model:
  source: tiny
  tiny: {arch: qwen2, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1,
         intermediate_size: 64, vocab: digits}
data:
  name: arithmetic
  arithmetic: {max_operand: 4, ops: ["+"], template: "{a} + {b} ="}
roles:
  actor: {devices: [0], threads: 1}
  rollout: {devices: {colocate_with: actor}, threads: 1}
  reward: {num_workers: 1}
rollout: {prompts_per_step: 16, group_size: 16, max_new_tokens: 3}
algo: {name: grpo, kl_coef: 0.0}
reward:
  functions: [{name: slow_first_int_match}]
checkpoint: {every: 1, keep_last: null, export_model: false}
tracking: {tensorboard: false}
"""


def roll_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "roll.cli.main", *args]


def test_stop_and_resume_an_embedded_run(tmp_path, monkeypatch):
    (tmp_path / "job.yaml").write_text(JOB)
    shutil.copy(PLUGIN, tmp_path / PLUGIN.name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    for name in ("RAY_ADDRESS", "ROLL_STATE_DIR"):
        env.pop(name, None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            roll_cmd(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    driver = subprocess.Popen(
        roll_cmd("run", "job.yaml"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / "runs" / "local" / "roll.sqlite"
    deadline = time.monotonic() + 240
    run = None
    while time.monotonic() < deadline:
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        if db.exists():
            with RunStore(db) as store:
                runs = store.list_runs()
            run = runs[0] if runs else None
            if run and (run["last_step"] or 0) >= 2:
                break
        time.sleep(0.3)
    assert run is not None and run["last_step"] >= 2, "the run did not reach step 2"
    run_id = run["id"]

    monkeypatch.chdir(tmp_path)  # the default workspace is ./runs
    listed = CliRunner().invoke(cli_app, ["jobs", "list"])
    assert listed.exit_code == 0 and run_id in listed.stdout and "running" in listed.stdout
    stopped = CliRunner().invoke(cli_app, ["jobs", "stop", run_id])
    assert stopped.exit_code == 0, stopped.output
    assert f"sent SIGTERM to driver pid {driver.pid}" in stopped.stdout
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err[-2000:]  # JobStopped's exit code
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    with RunStore(db) as store:
        run = store.get_run(run_id)
    assert run["status"] == "stopped" and run["last_step"] < 5
    assert "stop_requested" in "".join(run_logs(run_id, Path("runs")))

    again = CliRunner().invoke(cli_app, ["jobs", "stop", run_id])
    assert isinstance(again.exception, StateError) and "already finished (stopped)" in str(again.exception)
    resumed = cli("jobs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run {run_id}" in resumed.stdout
    with RunStore(db) as store:
        run = store.get_run(run_id)
    assert run["status"] == "completed" and run["resumed_count"] == 1 and run["last_step"] == 5
    raw = sqlite3.connect(db)
    per_step = raw.execute(
        "SELECT step, COUNT(*) FROM metrics WHERE run_id = ? AND key = 'reward/mean' GROUP BY step", (run_id,)
    ).fetchall()
    raw.close()
    assert per_step == [(s, 1) for s in range(1, 6)]
    finished = CliRunner().invoke(cli_app, ["jobs", "resume", run_id])
    assert isinstance(finished.exception, StateError) and "has completed" in str(finished.exception)
