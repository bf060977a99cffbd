"""The SQLite run store: WAL, upserts, concurrent readers, resume truncation, stale runs."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import roll
from roll.errors import StateError
from roll.jobs.runstore import RunStore

REPO_ROOT = Path(roll.__file__).resolve().parents[1]


def _python(code: str, **kwargs) -> subprocess.Popen:
    """Start ``python -c code`` with this checkout importable."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path / "runs.db") as opened:
        yield opened


def test_wal_mode_and_schema_version(store, tmp_path):
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw = sqlite3.connect(tmp_path / "runs.db")
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "metrics", "events", "rollouts", "schema_version"} <= tables
    raw.close()
    # Reopening an existing store neither fails nor duplicates the version row.
    RunStore(tmp_path / "runs.db").close()
    raw = sqlite3.connect(tmp_path / "runs.db")
    assert raw.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1
    raw.close()


def test_newer_schema_is_refused(tmp_path):
    RunStore(tmp_path / "runs.db").close()
    raw = sqlite3.connect(tmp_path / "runs.db")
    raw.execute("UPDATE schema_version SET version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(StateError, match="schema version 99"):
        RunStore(tmp_path / "runs.db")


def test_create_get_and_resume_run(store):
    store.create_run("r1", "grpo-tiny", "rlvr", {"lr": 1e-5, "model": {"name": "tiny"}})
    run = store.get_run("r1")
    assert run["status"] == "running"
    assert run["config"] == {"lr": 1e-5, "model": {"name": "tiny"}}
    assert run["pid"] == os.getpid() and run["owner_host"] == socket.gethostname()
    assert run["resumed_count"] == 0 and run["started_at"] is not None
    store.set_status("r1", "failed", error="boom")
    assert store.get_run("r1")["ended_at"] is not None

    store.create_run("r1", "grpo-tiny", "rlvr", {"lr": 2e-5})
    run = store.get_run("r1")
    assert run["status"] == "running" and run["resumed_count"] == 1
    assert run["error"] is None and run["ended_at"] is None
    assert run["config"] == {"lr": 2e-5}
    assert store.get_run("missing") is None


def test_set_status_and_list_runs(store):
    store.create_run("a", "a", "rlvr", {}, status="pending")
    store.create_run("b", "b", "sft", {})
    assert store.get_run("a")["started_at"] is None
    store.set_status("a", "running")
    assert store.get_run("a")["started_at"] is not None
    store.set_status("b", "completed")
    assert [r["id"] for r in store.list_runs(status="completed")] == ["b"]
    assert {r["id"] for r in store.list_runs()} == {"a", "b"}
    with pytest.raises(ValueError, match="unknown run status"):
        store.set_status("a", "exploded")
    with pytest.raises(StateError, match="create_run"):
        store.set_status("nope", "completed")


def test_metric_upserts_never_duplicate(store, tmp_path):
    store.create_run("r", "r", "rlvr", {})
    store.log_metrics("r", 1, {"reward/mean": 0.1, "loss/policy": 2.0})
    store.log_metrics("r", 2, {"reward/mean": 0.2})
    store.log_metrics("r", 2, {"reward/mean": 0.25})  # re-logged after a resume
    raw = sqlite3.connect(tmp_path / "runs.db")
    assert raw.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 3
    raw.close()
    assert store.get_metrics("r") == {
        "loss/policy": [(1, 2.0)],
        "reward/mean": [(1, 0.1), (2, 0.25)],
    }
    later = store.get_metrics("r", keys=["reward/mean"], start_step=2)
    assert later == {"reward/mean": [(2, 0.25)]}
    assert store.get_run("r")["last_step"] == 2


def test_nan_is_stored_as_null_and_read_as_nan(store, tmp_path):
    store.create_run("r", "r", "rlvr", {})
    store.log_metrics("r", 1, {"loss": float("nan"), "big": float("inf"), "ok": 1.5})
    raw = sqlite3.connect(tmp_path / "runs.db")
    assert raw.execute("SELECT value FROM metrics WHERE key = 'loss'").fetchone() == (None,)
    raw.close()
    series = store.get_metrics("r")
    assert math.isnan(series["loss"][0][1])
    assert series["big"] == [(1, math.inf)] and series["ok"] == [(1, 1.5)]


def test_rollouts_upsert_and_extra_columns(store):
    store.create_run("r", "r", "rlvr", {})
    rows = [
        {
            "sample_id": "s0",
            "group_id": 0,
            "prompt": "1+1=",
            "response": "2",
            "reward": 1.0,
            "advantage": 0.5,
            "state": "scored",
            "num_tokens": 3,
        },
        {"sample_id": "s1", "group_id": 0, "prompt": "1+1=", "response": "3", "reward": 0.0},
    ]
    store.log_rollouts("r", 1, rows)
    store.log_rollouts("r", 1, [{**rows[1], "reward": float("nan")}])
    got = store.get_rollouts("r", step=1)
    assert [g["sample_id"] for g in got] == ["s0", "s1"]
    assert got[0]["data"] == {"num_tokens": 3} and got[0]["advantage"] == 0.5
    assert got[1]["reward"] is None and got[1]["data"] == {}
    with pytest.raises(ValueError, match="sample_id"):
        store.log_rollouts("r", 2, [{"prompt": "x"}])


def test_events_in_order(store):
    store.create_run("r", "r", "rlvr", {})
    store.log_event("r", "stage", "generate started", step=1)
    store.log_event("r", "checkpoint", "saved step_000001", step=1, data={"path": "/x"})
    events = store.get_events("r")
    assert [(e["kind"], e["message"], e["data"]) for e in events] == [
        ("stage", "generate started", None),
        ("checkpoint", "saved step_000001", {"path": "/x"}),
    ]


def test_truncate_after_removes_later_steps(store):
    store.create_run("r", "r", "rlvr", {})
    for step in range(1, 6):
        store.log_metrics("r", step, {"reward/mean": step / 10})
        store.log_rollouts("r", step, [{"sample_id": "s", "reward": 1.0}])
    store.log_event("r", "note", "kept")
    store.truncate_after("r", 3)
    assert [s for s, _ in store.get_metrics("r")["reward/mean"]] == [1, 2, 3]
    assert [row["step"] for row in store.get_rollouts("r")] == [1, 2, 3]
    assert store.get_run("r")["last_step"] == 3
    assert len(store.get_events("r")) == 1


def test_reader_process_reads_while_writer_holds_transaction(store, tmp_path):
    store.create_run("r", "r", "rlvr", {})
    store.log_metrics("r", 1, {"reward/mean": 0.5})
    # A stale run makes the reader try to mark it; with the write lock taken it must skip that
    # quickly instead of waiting out the busy timeout.
    store.create_run("ghost", "ghost", "rlvr", {})
    store._conn.execute("UPDATE runs SET pid = ? WHERE id = 'ghost'", (_dead_pid(),))
    reader_code = f"""
        import json, time
        from roll.jobs.runstore import RunStore
        begin = time.monotonic()
        with RunStore({str(tmp_path / "runs.db")!r}, busy_timeout_s=30) as store:
            runs = store.list_runs()
            print(json.dumps({{"runs": sorted(r["id"] for r in runs),
                               "metrics": store.get_metrics("r"),
                               "seconds": time.monotonic() - begin}}))
    """
    with store.transaction():
        store.log_metrics("r", 2, {"reward/mean": 0.7})  # uncommitted while the reader runs
        reader = _python(reader_code)
        out, err = reader.communicate(timeout=20)
    assert reader.returncode == 0, err
    result = json.loads(out)
    assert result["runs"] == ["ghost", "r"]
    assert result["metrics"] == {"reward/mean": [[1, 0.5]]}  # the committed state only
    assert result["seconds"] < 10
    assert store.get_metrics("r")["reward/mean"] == [(1, 0.5), (2, 0.7)]
    assert store.mark_stale_runs() == ["ghost"]


def test_killed_driver_is_marked_interrupted(store, tmp_path):
    driver_code = f"""
        import sys, time
        from roll.jobs.runstore import RunStore
        store = RunStore({str(tmp_path / "runs.db")!r})
        store.create_run("dead", "dead", "rlvr", {{}})
        store.log_metrics("dead", 1, {{"reward/mean": 0.1}})
        print("ready", flush=True)
        time.sleep(60)
    """
    driver = _python(driver_code)
    assert driver.stdout.readline().strip() == "ready"
    store.create_run("alive", "alive", "rlvr", {})  # owned by this (live) process
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=10)

    marked = store.mark_stale_runs()
    assert marked == ["dead"]
    dead = store.get_run("dead")
    assert dead["status"] == "interrupted" and dead["ended_at"] is not None
    assert str(driver.pid) in dead["error"]
    assert store.get_events("dead")[-1]["kind"] == "interrupted"
    assert store.get_run("alive")["status"] == "running"
    assert store.mark_stale_runs() == []


def test_stale_detection_ignores_other_hosts_and_runs_on_read(store, tmp_path):
    store.create_run("remote", "remote", "rlvr", {})
    store.create_run("local", "local", "rlvr", {})
    dead_pid = _dead_pid()
    raw = sqlite3.connect(tmp_path / "runs.db")
    raw.execute("UPDATE runs SET owner_host = 'other', pid = ? WHERE id = 'remote'", (dead_pid,))
    raw.execute("UPDATE runs SET pid = ? WHERE id = 'local'", (dead_pid,))
    raw.commit()
    raw.close()
    statuses = {run["id"]: run["status"] for run in store.list_runs()}
    assert statuses == {"remote": "running", "local": "interrupted"}


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
