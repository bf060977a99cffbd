"""The dashboard's stop button and `roll jobs stop` are one function (roll.jobs.manage.request_stop):
both signal a driver that announced itself in the run store, and neither signals a pid that did not
(the run row's pid alone could be any process, e.g. a test runner that wrote the row)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from roll.dashboard import create_app
from roll.errors import StateError
from roll.jobs.manage import request_stop, stop_run
from roll.jobs.runstore import RunStore

TOKEN = "t" * 48
BASE = "http://127.0.0.1:8686"
# a stand-in driver: writes a file when SIGTERM arrives, then exits 143
DRIVER = """
import signal, sys, time
def stopped(*_):
    open(sys.argv[1], "w").write("SIGTERM")
    sys.exit(143)
signal.signal(signal.SIGTERM, stopped)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def driver(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "got")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def make_run(db: Path, run_id: str, pid: int, announced: bool) -> None:
    with RunStore(db) as store:
        store.create_run(run_id, "x", "rlvr", {})
        # the row says `pid` owns the run (what a driver's create_run writes)
        store._conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (pid, run_id))
        if announced:
            store.log_event(run_id, "driver", "driver", data={"pid": pid, "host": socket.gethostname()})


def wait_exit(proc: subprocess.Popen, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc.poll()


def test_dashboard_stop_signals_the_announced_driver(tmp_path, driver):
    db = tmp_path / "ws" / "run" / "roll.sqlite"
    make_run(db, "run-a", driver.pid, announced=True)
    with TestClient(create_app(tmp_path / "ws", TOKEN), base_url=BASE) as client:
        response = client.post("/api/runs/run-a/stop", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 202
    assert response.json()["note"] == f"sent SIGTERM to driver pid {driver.pid}; the run ends as 'stopped'"
    assert wait_exit(driver) == 143 and (tmp_path / "got").read_text() == "SIGTERM"
    with RunStore(db) as store:
        event = store.get_events("run-a")[-1]
    assert event["kind"] == "stop_requested" and event["data"]["source"] == "dashboard"


def test_a_pid_that_never_announced_itself_is_not_signalled(tmp_path, driver):
    db = tmp_path / "ws" / "run" / "roll.sqlite"
    make_run(db, "run-b", driver.pid, announced=False)
    note = stop_run("run-b", tmp_path / "ws")
    assert note.startswith("recorded a 'stop_requested' event; no driver of this run can be signalled")
    time.sleep(0.5)
    assert driver.poll() is None and not (tmp_path / "got").exists()


def test_finished_and_unknown_runs_are_refused(tmp_path):
    db = tmp_path / "ws" / "run" / "roll.sqlite"
    make_run(db, "run-c", os.getpid(), announced=False)
    with RunStore(db) as store:
        store.set_status("run-c", "completed")
    with pytest.raises(StateError, match="already finished"):
        request_stop(db, "run-c", source="cli")
    with pytest.raises(StateError, match="no run 'nope'"):
        request_stop(db, "nope", source="cli")
