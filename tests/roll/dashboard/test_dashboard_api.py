"""The JSON API over real run stores: runs, detail, metrics (downsampled, spikes kept), rollouts,
files, validate (same messages as the CLI) and stop."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from dashboard_support import (
    AUTH,
    DIP,
    DIP_STEP,
    LONG_RESPONSE,
    RUN_A,
    RUN_B,
    SPIKE,
    SPIKE_STEP,
    STEPS,
    T0,
    reward_at,
)
from typer.testing import CliRunner

from roll.cli.main import app as cli_app
from roll.dashboard.series import build_series
from roll.jobs.runstore import RunStore

REPO = Path(__file__).resolve().parents[3]


def test_runs_list_has_status_step_reward_and_summary(client):
    runs = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in runs] == [RUN_B, RUN_A]  # newest first
    alpha = next(r for r in runs if r["id"] == RUN_A)
    assert alpha["status"] == "running" and alpha["pipeline"] == "rlvr"
    assert alpha["last_step"] == STEPS
    assert alpha["latest_reward"] == pytest.approx(reward_at(STEPS))
    assert alpha["summary"] == {
        "metric": "reward/mean",
        "last": pytest.approx(reward_at(STEPS)),
        "min": DIP,
        "max": SPIKE,
    }
    assert alpha["run_dir"] == "exp/alpha" and alpha["started_at"] is not None


def test_runs_list_filters_by_status_and_summarises_a_chosen_metric(client):
    done = client.get("/api/runs", params={"status": "completed"}).json()["runs"]
    assert [r["id"] for r in done] == [RUN_B]
    kl = client.get("/api/runs", params={"metric": "actor/kl", "status": "running"}).json()["runs"]
    assert [r["id"] for r in kl] == [RUN_A]
    assert kl[0]["summary"]["max"] == pytest.approx(0.01)
    assert client.get("/api/runs", params={"status": "sleeping"}).status_code == 400


def test_dead_driver_reads_as_interrupted_without_writing(workspace, client):
    with sqlite3.connect(workspace.db_a) as conn:  # a pid that cannot exist
        conn.execute("UPDATE runs SET pid = 2147483646 WHERE id = ?", (RUN_A,))
    run = client.get(f"/api/runs/{RUN_A}").json()["run"]
    assert run["status"] == "interrupted" and run["stored_status"] == "running"
    with sqlite3.connect(workspace.db_a) as conn:
        assert conn.execute("SELECT status FROM runs WHERE id = ?", (RUN_A,)).fetchone()[0] == "running"


def test_run_detail_has_config_events_and_keys(client):
    detail = client.get(f"/api/runs/{RUN_A}").json()
    assert detail["config"]["steps"] == STEPS
    assert [e["kind"] for e in detail["events"]] == ["checkpoint", "stage"]
    assert detail["events"][1]["data"] == {"stage": "generate"}
    assert "reward/first_int_match" in detail["metric_keys"]
    assert detail["rollout_steps"] == 2 and detail["stop_requested"] is False
    after = client.get(f"/api/runs/{RUN_A}", params={"events_after": detail["events"][0]["id"]}).json()
    assert [e["kind"] for e in after["events"]] == ["stage"]
    assert client.get("/api/runs/no-such-run").status_code == 404


def test_metrics_downsampled_keep_the_spike_and_the_dip(client):
    data = client.get(
        f"/api/runs/{RUN_A}/metrics", params={"keys": "reward/mean,actor/kl", "max_points": 50}
    ).json()
    assert data["downsampled"] is True
    steps, rewards = data["step"], data["series"]["reward/mean"]["value"]
    assert len(steps) <= 2 * 50 and steps == sorted(steps)
    assert steps[0] == 1 and steps[-1] == STEPS
    assert rewards[steps.index(SPIKE_STEP)] == SPIKE
    assert rewards[steps.index(DIP_STEP)] == DIP
    assert data["series"]["reward/mean"]["points"] == STEPS
    assert data["wall_time"][0] == T0 + 2.0 and data["wall_origin"] == T0 + 2.0


def test_metrics_full_resolution_for_a_small_range(client):
    data = client.get(
        f"/api/runs/{RUN_A}/metrics",
        params={"keys": "reward/mean", "start": 300, "end": 340, "max_points": 50},
    ).json()
    assert data["downsampled"] is False
    assert data["step"] == list(range(300, 341))
    assert data["series"]["reward/mean"]["value"] == pytest.approx([reward_at(s) for s in range(300, 341)])


def test_metrics_smoothing_runs_over_the_whole_history(client):
    whole = client.get(f"/api/runs/{RUN_A}/metrics", params={"keys": "reward/mean", "smoothing": 0.9}).json()
    zoom = client.get(
        f"/api/runs/{RUN_A}/metrics",
        params={"keys": "reward/mean", "smoothing": 0.9, "start": 400, "end": 410},
    ).json()
    by_step = dict(zip(whole["step"], whole["series"]["reward/mean"]["smoothed"], strict=True))
    assert zoom["series"]["reward/mean"]["smoothed"] == pytest.approx([by_step[s] for s in range(400, 411)])
    raw = zoom["series"]["reward/mean"]["value"]
    assert zoom["series"]["reward/mean"]["smoothed"] != pytest.approx(raw)


def test_metrics_all_keys_and_bad_queries(client):
    data = client.get(f"/api/runs/{RUN_A}/metrics", params={"start": 1, "end": 3}).json()
    assert "time/generate" in data["series"] and data["step"] == [1, 2, 3]
    assert client.get(f"/api/runs/{RUN_A}/metrics", params={"max_points": 2}).status_code == 422
    assert client.get(f"/api/runs/{RUN_A}/metrics", params={"smoothing": 1.0}).status_code == 422
    assert client.get(f"/api/runs/{RUN_A}/metrics", params={"start": 9, "end": 3}).status_code == 400
    many = ",".join(f"k{i}" for i in range(65))
    assert client.get(f"/api/runs/{RUN_A}/metrics", params={"keys": many}).status_code == 400


def test_series_aligns_keys_and_maps_nan_to_none():
    rows = {
        "a": [(1, 1.0, 10.0), (2, float("nan"), 11.0), (3, 3.0, 12.0)],
        "b": [(2, 5.0, 11.5), (3, 6.0, 12.5)],
    }
    out = build_series(rows, start=None, end=None, max_points=16, smoothing=0.0)
    assert out["step"] == [1, 2, 3] and out["wall_time"] == [10.0, 11.0, 12.0]
    assert out["series"]["a"]["value"] == [1.0, None, 3.0]
    assert out["series"]["b"]["value"] == [None, 5.0, 6.0]


def test_rollout_steps_and_groups(client):
    assert client.get(f"/api/runs/{RUN_A}/steps").json()["steps"] == [100, 200]
    latest = client.get(f"/api/runs/{RUN_A}/rollouts").json()
    assert latest["step"] == 200 and latest["rows"] == 8
    groups = latest["groups"]
    assert [g["group_id"] for g in groups] == [0, 1]
    assert [s["sample_id"] for s in groups[0]["samples"]] == ["200:0:0", "200:0:1", "200:0:2", "200:0:3"]
    assert groups[1]["prompt"] == "2 + 0 =" and groups[1]["samples"][3]["response"] == LONG_RESPONSE
    assert groups[1]["samples"][3]["state"] == "truncated"
    assert groups[0]["mean_reward"] == pytest.approx(0.25)


def test_rollouts_sort_by_advantage_and_reward(client):
    data = client.get(f"/api/runs/{RUN_A}/rollouts", params={"step": 100, "sort": "advantage"}).json()
    advantages = [s["advantage"] for s in data["groups"][0]["samples"]]
    assert advantages == sorted(advantages, reverse=True)
    asc = client.get(
        f"/api/runs/{RUN_A}/rollouts", params={"step": 100, "sort": "reward", "order": "asc"}
    ).json()
    assert [s["reward"] for s in asc["groups"][0]["samples"]][-1] == 1.0
    assert client.get(f"/api/runs/{RUN_A}/rollouts", params={"sort": "length"}).status_code == 422


def test_rollouts_search_keeps_whole_groups(client):
    data = client.get(f"/api/runs/{RUN_A}/rollouts", params={"step": 200, "q": "VERY very"}).json()
    assert [g["group_id"] for g in data["groups"]] == [1]
    assert len(data["groups"][0]["samples"]) == 4
    assert [s["match"] for s in data["groups"][0]["samples"]] == [False, False, False, True]
    prompt = client.get(f"/api/runs/{RUN_A}/rollouts", params={"step": 200, "q": "1 + 0"}).json()
    assert [g["group_id"] for g in prompt["groups"]] == [0] and prompt["groups"][0]["prompt_match"]
    assert client.get(f"/api/runs/{RUN_A}/rollouts", params={"q": "nothing like it"}).json()["groups"] == []


def test_files_list_and_read(client):
    files = {f["path"] for f in client.get(f"/api/runs/{RUN_A}/files").json()["files"]}
    assert {"job.yaml", "driver.log", "roll.sqlite", "tensorboard/events.out.tfevents.1.host"} <= files
    job = client.get(f"/api/runs/{RUN_A}/files/job.yaml")
    assert job.status_code == 200 and job.text.startswith("pipeline: rlvr")
    assert job.headers["content-type"].startswith("text/plain")
    tail = client.get(f"/api/runs/{RUN_A}/files/driver.log", params={"tail": 8}).text
    assert tail == "ine 999\n"
    binary = client.get(f"/api/runs/{RUN_A}/files/tensorboard/events.out.tfevents.1.host")
    assert binary.headers["content-type"] == "application/octet-stream"
    assert "attachment" in binary.headers["content-disposition"]
    assert client.get(f"/api/runs/{RUN_A}/files/missing.txt").status_code == 404


QUICKSTART = (REPO / "configs" / "quickstart.yaml").read_text()


def test_validate_accepts_a_shipped_job(client):
    response = client.post("/api/jobs/validate", content=QUICKSTART, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] and body["pipeline"] == "rlvr"
    assert body["message"] == "ok: <submitted job> is a valid 'rlvr' job"
    assert "actor" in body["plan"]["roles"] and "actor" in body["plan_text"]


@pytest.mark.parametrize(
    "text",
    [
        QUICKSTART.replace("group_size: 16", "group_sise: 16"),  # unknown key, with a hint
        QUICKSTART.replace("max_new_tokens: 3", "max_new_tokens: three"),  # wrong type
        "pipeline: rlvr\nsteps: [1\n",  # malformed YAML
        "pipeline: no_such_pipeline\n",
    ],
)
def test_validate_errors_match_the_cli(client, tmp_path, text):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    result = CliRunner().invoke(cli_app, ["validate", str(job)])
    assert result.exit_code != 0
    cli_message = str(result.exception).replace(str(job), "<submitted job>")
    response = client.post("/api/jobs/validate", content=text, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"ok": False, "error": cli_message}


def test_stop_records_an_event_and_refuses_finished_runs(workspace, client):
    response = client.post(f"/api/runs/{RUN_A}/stop", headers=AUTH)
    assert response.status_code == 202
    assert response.json()["stop_requested"] is True
    with RunStore(workspace.db_a) as store:
        events = store.get_events(RUN_A)
    assert events[-1]["kind"] == "stop_requested" and events[-1]["data"]["source"] == "dashboard"
    assert client.get(f"/api/runs/{RUN_A}").json()["stop_requested"] is True
    assert client.post(f"/api/runs/{RUN_B}/stop", headers=AUTH).status_code == 409


def test_readers_never_block_the_writer_nor_see_uncommitted_rows(workspace, client):
    writer = sqlite3.connect(workspace.db_a, isolation_level=None, timeout=5)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute(
        "INSERT INTO metrics (run_id, step, key, value, wall_time) VALUES (?, ?, 'reward/mean', 1.0, 0)",
        (RUN_A, STEPS + 1),
    )
    started = time.monotonic()
    data = client.get(f"/api/runs/{RUN_A}/metrics", params={"keys": "reward/mean", "start": STEPS - 1}).json()
    assert time.monotonic() - started < 2.0
    assert data["step"] == [STEPS - 1, STEPS]  # the open transaction is invisible
    writer.execute("COMMIT")
    # and a writer commits while readers keep polling
    stop = threading.Event()
    errors: list[Exception] = []

    def poll():
        while not stop.is_set():
            try:
                client.get(f"/api/runs/{RUN_A}/metrics", params={"keys": "reward/mean", "start": STEPS})
            except Exception as exc:  # noqa: BLE001 - any failure fails the test below
                errors.append(exc)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        with RunStore(workspace.db_a, busy_timeout_s=1.0) as store:
            for step in range(STEPS + 2, STEPS + 40):
                store.log_metrics(RUN_A, step, {"reward/mean": 0.5})
    finally:
        stop.set()
        reader.join()
        writer.close()
    assert not errors
    assert client.get(f"/api/runs/{RUN_A}").json()["run"]["last_step"] == STEPS + 39


def test_new_run_folders_are_discovered(workspace, client):
    with RunStore(workspace.root / "a" / "b" / "c" / "roll.sqlite") as store:
        store.create_run("deep-1", "deep", "rlvr", {})
    with RunStore(workspace.root / "a" / "b" / "c" / "d" / "roll.sqlite") as store:
        store.create_run("too-deep-1", "deep", "rlvr", {})
    assert client.get("/api/runs/deep-1").status_code == 200
    assert client.get("/api/runs/too-deep-1").status_code == 404
    ids = {r["id"] for r in client.get("/api/runs").json()["runs"]}
    assert "deep-1" in ids and "too-deep-1" not in ids
    assert os.path.exists(workspace.root / "a" / "b" / "c" / "roll.sqlite")


def test_pages_render(client):
    runs = client.get("/")
    assert runs.status_code == 200 and RUN_A in runs.text and "compare selected" in runs.text
    page = client.get(f"/runs/{RUN_A}", params={"compare": f"{RUN_B},nope-1"})
    assert page.status_code == 200
    assert 'id="chart-grid"' in page.text and "pipeline: rlvr" in page.text  # resolved config (job.yaml)
    assert "not compared: nope-1" in page.text
    assert client.get("/runs/nope-1").status_code == 404
    compare = client.get("/compare", params=[("run", RUN_A), ("run", RUN_B)], follow_redirects=False)
    assert compare.status_code == 303 and compare.headers["location"] == f"/runs/{RUN_A}?compare={RUN_B}"
    assert client.get("/validate").status_code == 200
