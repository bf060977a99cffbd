"""Cluster addresses, auth headers and the launcher path of `roll cluster up | down` (without a cloud:
the `ray` command is replaced by a script that records how it was called)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from roll.jobs import cluster
from roll.jobs.cluster import (
    ClusterError,
    ClusterState,
    ray_auth_headers,
    read_state,
    start_launcher,
    stop_cluster,
)
from roll.jobs.rayapi import known_address, resolve_address

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ROLL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_address_precedence_and_forms(monkeypatch):
    assert known_address() is None
    with pytest.raises(ClusterError, match="roll cluster up"):
        resolve_address()
    cluster._write_state(ClusterState(kind="local", dashboard_url="http://127.0.0.1:9999"))
    assert resolve_address() == "http://127.0.0.1:9999"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a driver address, not the Jobs API
    assert resolve_address() == "http://127.0.0.1:9999"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert resolve_address() == "http://head:8265"
    assert resolve_address("other:8265") == "http://other:8265"
    with pytest.raises(ClusterError, match="dashboard's http"):
        resolve_address("ray://head:10001")


def test_auth_header_follows_ray_token_sources(tmp_path, monkeypatch):
    assert ray_auth_headers() == {}
    (tmp_path / "token").write_text("abc123\n")
    assert ray_auth_headers() == {"Authorization": "Bearer abc123"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "fromenv")
    assert ray_auth_headers() == {"Authorization": "Bearer fromenv"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ray_auth_headers() == {}


def test_node_env_creates_a_private_token_and_pins_token_mode(tmp_path):
    env = cluster._node_env()
    token = tmp_path / "token"
    assert env["RAY_AUTH_MODE"] == "token" and len(token.read_text()) == 32
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # `roll` for the Jobs API
    assert cluster._node_env()["RAY_AUTH_MODE"] == "token" and len(token.read_text()) == 32  # kept


def test_launcher_up_and_down_call_ray_up_and_down(tmp_path, monkeypatch):
    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "ray"
    record = f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n{record}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(cluster, "_ray_exe", lambda: str(fake))
    config = DEPLOY / "aws.yaml"
    state = start_launcher(config)
    assert state.kind == "launcher" and read_state().launcher_config == str(config.resolve())
    with pytest.raises(ClusterError, match="already recorded"):
        start_launcher(config)
    assert "launcher cluster" in stop_cluster()
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert recorded == [["up", "-y", str(config)], ["down", "-y", str(config.resolve())]]
    assert read_state() is None
    with pytest.raises(ClusterError, match="no cluster started"):
        stop_cluster()


def test_launcher_failure_and_missing_config_are_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ClusterError, match="does not exist"):
        start_launcher(tmp_path / "nope.yaml")
    failing = tmp_path / "ray"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr(cluster, "_ray_exe", lambda: str(failing))
    with pytest.raises(ClusterError, match=r"'ray up .*' failed \(exit 3\)"):
        start_launcher(DEPLOY / "aws.yaml")
    assert read_state() is None  # nothing recorded for a cluster that did not come up


def test_broken_state_file_is_named(tmp_path):
    path = tmp_path / "state" / "cluster.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ClusterError, match="cluster.json is not a roll cluster state file"):
        read_state()
