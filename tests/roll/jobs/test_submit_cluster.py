"""`roll cluster up` (a real local Ray head plus one worker node, token auth on), `roll submit`
through the Ray Jobs API, `roll jobs list | logs | stop | resume`, and `roll cluster down`.

One job goes the whole way: submitted, stopped by `roll jobs stop` after its second checkpoint
(SIGTERM from Ray → the run ends as 'stopped'), resumed with `roll jobs resume` (a second Ray
submission, `<id>-r1`), run to completion with every step's metrics stored exactly once.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

import roll
from roll.cli.main import app as cli_app
from roll.errors import ConfigError
from roll.jobs.cluster import (
    ClusterError,
    _group_alive,
    free_ports,
    read_state,
    start_local,
    state_file,
    stop_cluster,
)
from roll.jobs.manage import list_jobs, request_stop, resume_run, run_logs, stop_run
from roll.jobs.rayapi import job_client
from roll.jobs.runstore import RunStore
from roll.jobs.submit import submit_job

REPO = Path(roll.__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "pipelines" / "rlvr" / "slow_reward_plugin.py"
JOB = """\
pipeline: rlvr
name: subm
steps: 6
output_dir: runs/subm
imports: [slow_reward_plugin]
cluster: {cpu_slots: 1}
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


def roll_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "roll.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (1 CPU) and a worker node (1 CPU, 1 fake GPU), with this test's own state and token."""
    state = tmp_path_factory.mktemp("state")
    patch = pytest.MonkeyPatch()
    patch.setenv("ROLL_STATE_DIR", str(state))
    patch.setenv("RAY_AUTH_TOKEN_PATH", str(state / "auth_token"))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        patch.delenv(name, raising=False)
    patch.setenv("PYTHONPATH", str(REPO))  # the nodes (and the jobs they run) import this checkout
    gcs, dash = free_ports(2)
    started = start_local(workers=1, num_cpus=1, worker_cpus=1, worker_gpus=1, port=gcs, dashboard_port=dash)
    try:
        yield started
    finally:
        if read_state() is not None:
            stop_cluster()
        patch.undo()


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A working folder with the job and its reward plugin; the workspace is its runs/."""
    (tmp_path / "job.yaml").write_text(JOB)
    shutil.copy(PLUGIN, tmp_path / PLUGIN.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def wait_for(predicate, timeout: float, what: str, run_id: str | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    detail = ""
    if run_id is not None:  # what the driver printed, to see why
        detail = "\n" + job_client().get_job_logs(run_id)[-3000:]
    raise AssertionError(f"timed out waiting for {what}{detail}")


def run_row(db: Path, run_id: str) -> dict:
    with RunStore(db) as store:
        return store.get_run(run_id)


def test_token_auth_is_on_and_status_shows_both_nodes(cluster, project):
    assert oct(Path(os.environ["RAY_AUTH_TOKEN_PATH"]).stat().st_mode & 0o777) == "0o600"
    with pytest.raises(urllib.error.HTTPError) as refused:  # no header: Ray's REST API says 401
        urllib.request.urlopen(cluster.dashboard_url + "/api/jobs/", timeout=10)
    assert refused.value.code == 401
    status = roll_cli("cluster", "status", cwd=project)
    assert status.returncode == 0, status.stderr
    assert "2 node(s) alive, 2 CPUs, 1 GPUs" in status.stdout
    assert " head " in status.stdout and " worker " in status.stdout


def test_bad_job_and_bad_address_never_reach_ray(cluster, project):
    before = len(job_client().list_jobs())
    (project / "bad.yaml").write_text(JOB.replace("steps: 6", "stepz: 6"))
    validate = CliRunner().invoke(cli_app, ["validate", "bad.yaml"])
    submitted = CliRunner().invoke(cli_app, ["submit", "bad.yaml"])
    assert isinstance(submitted.exception, ConfigError) and "stepz" in str(submitted.exception)
    assert str(submitted.exception) == str(validate.exception)  # the same error as roll validate
    (port,) = free_ports(1)
    nowhere = roll_cli("submit", "job.yaml", "--address", f"http://127.0.0.1:{port}", cwd=project)
    assert nowhere.returncode == 2 and not nowhere.stdout
    lines = nowhere.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Ray cluster at http://127.0.0.1:{port}" in lines[0]
    assert len(job_client().list_jobs()) == before
    with pytest.raises(ConfigError, match="outside the working folder"):
        submit_job(REPO / "configs" / "quickstart.yaml", working_dir=project)


def test_submit_stop_resume_through_ray(cluster, project):
    done = submit_job(Path("job.yaml"))
    run_id, db = done.run_id, project / "runs" / "subm" / "roll.sqlite"
    assert done.submission_id == run_id and done.run_dir == project / "runs" / "subm"
    client = job_client()
    assert client.get_job_info(run_id).metadata["roll_run_id"] == run_id  # Ray's list agrees

    wait_for(lambda: (run_row(db, run_id)["last_step"] or 0) >= 2, 240, "step 2", run_id)
    assert stop_run(run_id, project / "runs").startswith("asked Ray")  # not a signal to a local pid
    wait_for(lambda: run_row(db, run_id)["status"] != "running", 60, "the run to stop", run_id)
    assert run_row(db, run_id)["status"] == "stopped", run_row(db, run_id)["error"]
    wait_for(lambda: str(client.get_job_status(run_id)) == "STOPPED", 60, "Ray to stop the job")
    stopped_at = run_row(db, run_id)["last_step"]
    assert stopped_at < 6, "the job ended before the stop reached it"
    with pytest.raises(roll.errors.StateError, match="already finished"):
        request_stop(db, run_id, source="cli")

    rows, warning = list_jobs(project / "runs")
    assert warning is None
    assert [(r["run_id"], r["status"], r["ray"]) for r in rows] == [(run_id, "stopped", "STOPPED")]

    again = resume_run(run_id, project / "runs")["submission"]
    assert again.submission_id == f"{run_id}-r1"
    finished = lambda: run_row(db, run_id)["status"] in ("completed", "failed")  # noqa: E731
    wait_for(finished, 240, "the resumed run", again.submission_id)
    run = run_row(db, run_id)
    assert run["status"] == "completed" and run["resumed_count"] == 1 and run["last_step"] == 6
    raw = sqlite3.connect(db)
    per_step = raw.execute(
        "SELECT step, COUNT(*) FROM metrics WHERE run_id = ? AND key = 'reward/mean' GROUP BY step", (run_id,)
    ).fetchall()
    raw.close()
    assert per_step == [(s, 1) for s in range(1, 7)]
    wait_for(lambda: str(client.get_job_status(again.submission_id)) == "SUCCEEDED", 60, "Ray's status")
    rows, _ = list_jobs(project / "runs")
    assert [(r["status"], r["ray"]) for r in rows] == [("completed", "SUCCEEDED")]
    log = "".join(run_logs(run_id, project / "runs"))
    assert "step 6/6" in log and "--resume" in log
    listed = roll_cli("jobs", "list", cwd=project)
    assert run_id in listed.stdout and "SUCCEEDED" in listed.stdout


def test_down_stops_exactly_what_up_started(cluster):
    groups, temp_dir = list(cluster.process_groups), Path(cluster.temp_dir)
    assert all(_alive(pgid) for pgid in groups)
    assert "2 node(s)" in stop_cluster()
    assert not any(_alive(pgid) for pgid in groups)
    assert not temp_dir.exists() and not state_file().exists()
    with pytest.raises(ClusterError, match="no cluster started"):
        stop_cluster()


def _alive(pgid: int) -> bool:
    return _group_alive(pgid)
