"""Run `roll run` in a subprocess and read what it left in its run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from roll.jobs.runstore import RunStore

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent


def roll_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "roll.cli.main", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}


def run_roll(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        roll_cmd(*args), capture_output=True, text=True, cwd=ROOT, env=env(), timeout=timeout
    )


def read_run(run_dir: Path) -> dict:
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    with RunStore(run_dir / "roll.sqlite") as store:
        return {
            "run": store.get_run(run_id),
            "metrics": store.get_metrics(run_id),
            "rollouts": store.get_rollouts(run_id),
            "n_metric_rows": store._conn.execute(
                "SELECT COUNT(*) FROM metrics WHERE run_id = ?", (run_id,)
            ).fetchone()[0],
        }
