"""Run `roll run` on the agentic FrozenLake job in a subprocess and read its run store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from roll.jobs.runstore import RunStore

ROOT = Path(__file__).resolve().parents[3]
JOB = "configs/agentic/frozen_lake_tiny.yaml"


def run_roll(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "roll.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def read_run(run_dir: Path) -> dict:
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    with RunStore(run_dir / "roll.sqlite") as store:
        return {
            "run": store.get_run(run_id),
            "metrics": store.get_metrics(run_id),
            "rollouts": store.get_rollouts(run_id),
        }


def series(data: dict, key: str) -> list[float]:
    return [value for _, value in data["metrics"][key]]
