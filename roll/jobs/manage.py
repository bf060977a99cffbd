"""``roll jobs list | logs | stop | resume``, and the stop action of the dashboard.

A run is found in the workspace (the folder holding run folders, ``runs`` by default) by its id.
What a run's events say decides how it is reached:

- a ``submitted`` event (written by ``roll submit``): the run is a Ray job; logs, stop and
  resume go through the Jobs API at the recorded address, under the recorded submission id;
- a ``driver`` event (written by every ``roll run``): the pid and host of its driver process;
  stop sends that pid SIGTERM when it runs on this host. Only a pid that announced itself this
  way is ever signalled.

Runs submitted to a remote cluster are not in the local workspace; ``list`` and ``logs`` then
read Ray's job list, where the submission id is the run id.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from roll.errors import ConfigError, StateError
from roll.jobs.cluster import ClusterError
from roll.jobs.rayapi import call, job_client, known_address, resolve_address
from roll.jobs.runstore import FINISHED_STATUSES, RunStore, pid_is_alive

STORE_FILE = "roll.sqlite"
_SKIP_DIRS = frozenset({"checkpoints", "tensorboard", "model", "__pycache__"})
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RAY_FINISHED = {"SUCCEEDED": "completed", "FAILED": "failed", "STOPPED": "stopped"}


@dataclass(frozen=True)
class FoundRun:
    """A run of the workspace: its row and where its store lives."""

    run: dict[str, Any]
    db_path: Path

    @property
    def run_id(self) -> str:
        return self.run["id"]

    @property
    def run_dir(self) -> Path:
        return self.db_path.parent


def run_stores(workspace: Path, max_depth: int = 3) -> list[Path]:
    """``roll.sqlite`` files at most ``max_depth`` folders below ``workspace``."""
    found, base = [], len(workspace.parts)
    for folder, dirs, files in os.walk(workspace):
        here = Path(folder)
        if STORE_FILE in files:
            found.append(here / STORE_FILE)
        deep = len(here.parts) - base >= max_depth
        dirs[:] = [] if deep else sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
    return sorted(found)


def workspace_runs(workspace: Path) -> list[FoundRun]:
    """Every run in the workspace's stores (runs whose driver died here are marked interrupted)."""
    found = []
    for db_path in run_stores(workspace):
        with RunStore(db_path, busy_timeout_s=5.0) as store:
            found.extend(FoundRun(run, db_path) for run in store.list_runs())
    return sorted(found, key=lambda f: f.run.get("created_at") or 0, reverse=True)


def locate_run(workspace: Path, run_id: str) -> FoundRun | None:
    for found in workspace_runs(workspace):
        if found.run_id == run_id:
            return found
    return None


def latest_event(db_path: Path, run_id: str, kind: str) -> dict[str, Any] | None:
    with RunStore(db_path, busy_timeout_s=5.0) as store:
        events = [e for e in store.get_events(run_id) if e["kind"] == kind]
    return events[-1] if events else None


# ----------------------------------------------------------------------------- list


def list_jobs(workspace: Path, address: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Runs of the workspace merged with the Ray jobs of the cluster (when one is known).

    Returns ``(rows, warning)``; each row has run_id, name, pipeline, status, step, started and
    ray (Ray's job status, "" when not a Ray job). An unreachable cluster named with ``address``
    is an error; one only found in RAY_ADDRESS or the state file gives a warning.
    """
    rows: dict[str, dict[str, Any]] = {}
    for found in workspace_runs(workspace):
        run = found.run
        rows[run["id"]] = {
            "run_id": run["id"],
            "name": run["name"],
            "pipeline": run["pipeline"],
            "status": run["status"],
            "step": run["last_step"],
            "started": run["started_at"] or run["created_at"],
            "ray": "",
        }
    url, warning = known_address(address), None
    if url is not None:
        try:
            jobs = call(url, "listing jobs", job_client(url).list_jobs)
        except ClusterError as exc:
            if address is not None:
                raise
            jobs, warning = [], f"Ray jobs not shown: {exc}"
        for job in jobs:
            _merge_ray_job(rows, job)
    for row in rows.values():
        row.pop("_ray_started", None)
    return sorted(rows.values(), key=lambda r: r["started"] or 0, reverse=True), warning


def _merge_ray_job(rows: dict[str, dict[str, Any]], job: Any) -> None:
    run_id = (job.metadata or {}).get("roll_run_id") or job.submission_id
    status = str(getattr(job.status, "value", job.status))
    started = (job.start_time or 0) / 1000 or None
    row = rows.get(run_id)
    if row is None:
        rows[run_id] = row = {
            "run_id": run_id,
            "name": "",
            "pipeline": (job.metadata or {}).get("roll_pipeline", ""),
            "status": _RAY_FINISHED.get(status, status.lower()),
            "step": None,
            "started": started,
            "ray": "",
        }
    # a resumed run has one submission per attempt: the latest one speaks for it
    if started is not None and started < row.get("_ray_started", 0):
        return
    row["_ray_started"], row["ray"] = started or 0, status
    if row["status"] == "pending" and status in _RAY_FINISHED:
        row["status"] = _RAY_FINISHED[status]  # the driver never started (e.g. a bad entrypoint)


def format_jobs(rows: list[dict[str, Any]]) -> str:
    """The table ``roll jobs list`` prints."""
    if not rows:
        return "no runs yet (start one with 'roll run JOB.yaml' or 'roll submit JOB.yaml')"
    header = f"{'RUN ID':44} {'STATUS':12} {'PIPELINE':9} {'STEP':>5} {'STARTED':19} RAY"
    lines = [header]
    for r in rows:
        started = datetime.fromtimestamp(r["started"]).strftime("%Y-%m-%d %H:%M:%S") if r["started"] else "-"
        step = "-" if r["step"] is None else str(r["step"])
        lines.append(
            f"{r['run_id']:44} {r['status']:12} {r['pipeline'] or '-':9} {step:>5} {started:19} "
            f"{r['ray'] or '-'}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- logs


def run_logs(run_id: str, workspace: Path, address: str | None = None, follow: bool = False) -> Iterator[str]:
    """The run's log: Ray's driver log for a Ray job, else the run store's events."""
    found = locate_run(workspace, run_id)
    submitted = latest_event(found.db_path, run_id, "submitted") if found else None
    if submitted is not None:
        yield from _ray_logs(
            address or submitted["data"]["address"], submitted["data"]["submission_id"], follow
        )
    elif found is not None:
        yield from _event_logs(found, follow)
    elif known_address(address) is not None:
        yield from _ray_logs(resolve_address(address), run_id, follow)
    else:
        raise _not_found(run_id, workspace)


def _ray_logs(url: str, submission_id: str, follow: bool) -> Iterator[str]:
    client = job_client(url)
    if not follow:
        yield call(url, f"reading the logs of {submission_id}", client.get_job_logs, submission_id)
        return
    call(url, f"finding job {submission_id}", client.get_job_status, submission_id)
    loop = asyncio.new_event_loop()
    tail = client.tail_job_logs(submission_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(tail.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(tail.aclose())
        loop.close()


def _event_logs(found: FoundRun, follow: bool, poll_s: float = 1.0) -> Iterator[str]:
    seen = 0
    while True:
        with RunStore(found.db_path, busy_timeout_s=5.0) as store:
            events = store.get_events(found.run_id)
            status = store.get_run(found.run_id)["status"]
        for event in events[seen:]:
            stamp = datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S")
            step = "" if event["step"] is None else f" step {event['step']}"
            yield f"{stamp} {event['kind']}{step}: {event['message']}\n"
        seen = len(events)
        if not follow or status in FINISHED_STATUSES:
            if follow:
                yield f"run {found.run_id} {status}\n"
            return
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- stop


def request_stop(db_path: Path, run_id: str, *, source: str, client: str | None = None) -> str:
    """Stop a run: record ``stop_requested``, then stop its Ray job or signal its driver.

    What ``roll jobs stop`` and the dashboard's stop button both call. Returns what was done.

    Raises:
        StateError: the run is unknown or has already finished.
        ClusterError: its Ray cluster could not be reached (the request is still recorded).
    """
    with RunStore(db_path, busy_timeout_s=5.0) as store:
        run = store.get_run(run_id)
        if run is None:
            raise StateError(f"no run {run_id!r} in {db_path}")
        if run["status"] in FINISHED_STATUSES:
            raise StateError(f"run {run_id!r} has already finished ({run['status']}); nothing to stop")
        store.log_event(
            run_id,
            "stop_requested",
            f"stop requested from the {source}",
            step=run["last_step"],
            data={"source": source, "client": client},
        )
    submitted = latest_event(db_path, run_id, "submitted")
    if submitted is not None:
        url, submission_id = submitted["data"]["address"], submitted["data"]["submission_id"]
        call(url, f"stopping {submission_id}", job_client(url).stop_job, submission_id)
        return f"asked Ray at {url} to stop job {submission_id}"
    driver = latest_event(db_path, run_id, "driver")
    pid, host = (driver["data"]["pid"], driver["data"]["host"]) if driver else (None, None)
    if pid is not None and pid == run["pid"] and host == socket.gethostname() and pid_is_alive(pid):
        os.kill(pid, signal.SIGTERM)
        return f"sent SIGTERM to driver pid {pid}; the run ends as 'stopped'"
    where = f"on {run['owner_host']}" if run["owner_host"] != socket.gethostname() else "any more"
    return f"recorded a 'stop_requested' event; no driver of this run can be signalled from here ({where})"


def stop_run(run_id: str, workspace: Path, address: str | None = None) -> str:
    """``roll jobs stop ID``: a workspace run, or a Ray job of a remote cluster."""
    found = locate_run(workspace, run_id)
    if found is not None:
        return request_stop(found.db_path, run_id, source="cli")
    if known_address(address) is None:
        raise _not_found(run_id, workspace)
    url = resolve_address(address)
    call(url, f"stopping {run_id}", job_client(url).stop_job, run_id)
    return f"asked Ray at {url} to stop job {run_id}"


# ----------------------------------------------------------------------------- resume


def resume_run(run_id: str, workspace: Path, address: str | None = None) -> dict[str, Any]:
    """``roll jobs resume ID``: continue a finished-early run from its latest checkpoint.

    A Ray job is resubmitted to its cluster (returns ``{"submission": Submission}``); a run of
    ``roll run`` continues in this process (returns the run's summary, like ``roll run``).
    """
    from roll.config import load_job
    from roll.jobs.local import run_job
    from roll.jobs.submit import resubmit

    found = locate_run(workspace, run_id)
    if found is None:
        raise _not_found(run_id, workspace)
    if found.run["status"] in ("running", "pending"):
        raise StateError(
            f"run {run_id!r} is still {found.run['status']}; stop it first with 'roll jobs stop {run_id}'"
        )
    if found.run["status"] == "completed":
        raise StateError(f"run {run_id!r} has completed; there is nothing left to resume")
    if not (found.run_dir / "job.yaml").is_file():
        raise StateError(f"{found.run_dir} has no job.yaml (the driver never started); submit the job again")
    submitted = latest_event(found.db_path, run_id, "submitted")
    if submitted is not None:
        url = resolve_address(address) if address else submitted["data"]["address"]
        attempt = found.run["resumed_count"] + 1
        working_dir = submitted["data"].get("working_dir") or str(found.run_dir)
        return {"submission": resubmit(found.run_dir, run_id, attempt, url, working_dir)}
    loaded = load_job(found.run_dir / "job.yaml", [f"output_dir={found.run_dir}"])
    return run_job(loaded, resume=True)


def _not_found(run_id: str, workspace: Path) -> ConfigError:
    return ConfigError(
        f"no run {run_id!r} in the workspace {workspace} (see 'roll jobs list'); pass --workspace "
        "with the folder that holds its run folder, or --address for a job on a remote cluster"
    )


def check_run_id(run_id: str) -> str:
    """A run id as roll makes them (letters, digits, '.', '_', '-'); anything else is refused."""
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"{run_id!r} is not a run id: letters, digits, '.', '_' and '-' only (see 'roll jobs list')"
        )
    return run_id
