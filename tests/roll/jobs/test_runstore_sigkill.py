"""The run store under kill -9: a writer process is SIGKILLed at many random points (mid-transaction,
mid-checkpoint, between steps) and restarted, while reader processes poll the same file.

Afterwards `PRAGMA integrity_check` is ok, no reader ever saw part of a step (a step's metric rows
appear all together or not at all, and so do its rollouts), no reader ever got an error, and the
steps that survived are exactly 1..N with every row.
"""

# ruff: noqa: E501  (the writer and reader scripts are kept as whole lines)
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import roll

REPO = Path(roll.__file__).resolve().parents[1]
KEYS, ROLLOUTS, RUN = 40, 8, "killed-run"
KILLS, READERS, READ_S = 30, 2, 14.0

# Resumes after the last complete step, as a restarted driver does; checkpoints the WAL every 20 ms
# so kills also land inside checkpoints.
WRITER = """
import sys
from roll.jobs.runstore import RunStore

store = RunStore(sys.argv[1], checkpoint_every_s=0.02)
run = store.get_run("{run}")
if run is None:
    store.create_run("{run}", "killed", "rlvr", {{}})
step = (run or {{}}).get("last_step") or 0
print("ready", flush=True)
while True:
    step += 1
    store.log_metrics("{run}", step, {{f"key/{{i:02d}}": step + i for i in range({keys})}})
    rows = [{{"sample_id": f"s{{j}}", "prompt": "p" * 200, "response": "r" * 400, "reward": j}} for j in range({rollouts})]
    store.log_rollouts("{run}", step, rows)
    if step % 7 == 0:
        store.log_event("{run}", "stage", f"step {{step}}", step=step)
""".format(run=RUN, keys=KEYS, rollouts=ROLLOUTS)

# Polls with short read-only connections (as the dashboard does) and long-lived ones; records every
# partial step and every exception.
READER = """
import json, sqlite3, sys, time, urllib.parse
db, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
uri = "file:" + urllib.parse.quote(db) + "?mode=ro"
long_lived = sqlite3.connect(uri, uri=True, timeout=5)
partial, errors, polls, max_step = [], [], 0, 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        conn = long_lived if polls % 2 else sqlite3.connect(uri, uri=True, timeout=5)
        conn.execute("BEGIN")  # one snapshot for both queries
        metrics = conn.execute("SELECT step, COUNT(*) FROM metrics WHERE run_id = ? GROUP BY step", ("{run}",)).fetchall()
        rollouts = conn.execute("SELECT step, COUNT(*) FROM rollouts WHERE run_id = ? GROUP BY step", ("{run}",)).fetchall()
        conn.execute("COMMIT")
        if conn is not long_lived:
            conn.close()
        partial += [("metrics", s, n) for s, n in metrics if n != {keys}]
        partial += [("rollouts", s, n) for s, n in rollouts if n != {rollouts}]
        max_step = max([max_step] + [s for s, _ in metrics])
        polls += 1
    except Exception as exc:
        if "no such table" in str(exc) and max_step == 0:
            continue  # the first writer has not created the schema yet
        errors.append(f"{{type(exc).__name__}}: {{exc}}")
json.dump({{"partial": partial[:20], "errors": errors[:20], "polls": polls, "max_step": max_step}}, open(out, "w"))
""".format(run=RUN, keys=KEYS, rollouts=ROLLOUTS)


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, **kwargs)


def test_sigkilled_writer_never_corrupts_nor_shows_partial_steps(tmp_path):
    db = tmp_path / "roll.sqlite"
    rng = random.Random(1234)
    # the first writer creates the schema before the readers start polling
    writer = python(WRITER, str(db), stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    readers = [
        python(READER, str(db), str(tmp_path / f"reader{i}.json"), str(READ_S)) for i in range(READERS)
    ]
    started, kills = time.monotonic(), 0
    try:
        while kills < KILLS and time.monotonic() - started < READ_S - 1.0:
            time.sleep(rng.uniform(0.01, 0.25))  # a random point in the write loop
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
            kills += 1
            writer = python(WRITER, str(db), stdout=subprocess.PIPE, text=True)
            assert writer.stdout.readline().strip() == "ready"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        for reader in readers:
            reader.wait(timeout=60)
    assert kills >= 15

    results = [json.loads((tmp_path / f"reader{i}.json").read_text()) for i in range(READERS)]
    for result in results:
        assert result["errors"] == [] and result["partial"] == []
        assert result["polls"] > 50
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    metric_steps = raw.execute(
        "SELECT step, COUNT(*) FROM metrics WHERE run_id = ? GROUP BY step ORDER BY step", (RUN,)
    ).fetchall()
    last_step = raw.execute("SELECT last_step FROM runs WHERE id = ?", (RUN,)).fetchone()[0]
    rollout_steps = dict(raw.execute("SELECT step, COUNT(*) FROM rollouts GROUP BY step").fetchall())
    raw.close()
    # every surviving step is whole, there are no gaps, and last_step moved with the metrics
    assert metric_steps == [(s, KEYS) for s in range(1, last_step + 1)]
    assert last_step > max(r["max_step"] for r in results) // 2 > 0
    assert all(n == ROLLOUTS for n in rollout_steps.values())
    # a kill between a step's metrics and its rollouts loses only those rollouts, never half of them
    assert set(rollout_steps) <= set(range(1, last_step + 1))
