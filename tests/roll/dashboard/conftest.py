"""Fixtures of the dashboard tests: a workspace of real run stores, the app over it (TestClient),
and the app served by uvicorn on a free 127.0.0.1 port (browser and raw-HTTP tests)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from dashboard_support import BASE, PORT, RUN_A, RUN_B, STEPS, TOKEN, free_port, write_run
from fastapi.testclient import TestClient

from roll.dashboard import create_app
from roll.jobs.runstore import RunStore


@dataclass
class Workspace:
    root: Path
    db_a: Path
    db_b: Path


@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written once per session with RunStore; each test gets its own copy."""
    root = tmp_path_factory.mktemp("template") / "ws"
    db_a = root / "exp" / "alpha" / "roll.sqlite"
    with RunStore(db_a) as store:
        write_run(store, RUN_A, STEPS)
    with RunStore(root / "beta" / "roll.sqlite") as store:
        write_run(store, RUN_B, 20, rollout_steps=(10,), status="completed")
    (db_a.parent / "job.yaml").write_text("pipeline: rlvr\nname: alpha\nsteps: 500\n")
    (db_a.parent / "tensorboard").mkdir()
    (db_a.parent / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"\x00\x01binary")
    (db_a.parent / "driver.log").write_text("".join(f"line {i}\n" for i in range(1000)))
    return root


@pytest.fixture
def workspace(workspace_template: Path, tmp_path: Path) -> Workspace:
    """Run A (running, 500 steps with a spike and a dip, rollouts at steps 100 and 200, events)
    in exp/alpha/ and run B (completed, 20 steps) in beta/."""
    root = tmp_path / "ws"
    shutil.copytree(workspace_template, root)
    return Workspace(root, root / "exp" / "alpha" / "roll.sqlite", root / "beta" / "roll.sqlite")


@pytest.fixture
def client(workspace: Workspace) -> Iterator[TestClient]:
    app = create_app(workspace.root, TOKEN, port=PORT)
    with TestClient(app, base_url=BASE) as test_client:
        yield test_client


@dataclass
class LiveServer:
    url: str
    port: int


@pytest.fixture
def live_server(workspace: Workspace) -> Iterator[LiveServer]:
    """The dashboard on a free 127.0.0.1 port, served by uvicorn in a thread."""
    port = free_port()
    app = create_app(workspace.root, TOKEN, port=port)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    yield LiveServer(f"http://127.0.0.1:{port}", port)
    server.should_exit = True
    thread.join(timeout=10)
