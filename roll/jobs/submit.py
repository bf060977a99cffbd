"""``roll submit``: validate a YAML job, then hand it to a Ray cluster through the Ray Jobs API.

The job is checked here first, with the same errors as ``roll validate`` (a bad job never
reaches Ray). The entrypoint is ``roll run JOB.yaml [overrides] cluster.address=auto --run-id
ID``: the driver joins the cluster it runs on, and the run id doubles as Ray's submission id, so
``roll jobs``, the dashboard and ``ray job list`` name the job the same way. The working folder
(default: the current one, minus what .gitignore and :data:`EXCLUDES` leave out) is uploaded as
the job's ``working_dir``, so the job file, local data and plugin modules travel with it.

When the cluster runs on this machine (``roll cluster up``), the run folder is pinned to an
absolute path here: the run store lands in the local workspace, ``roll jobs`` and the dashboard
see the run at once, and ``roll submit`` records it as ``pending`` with a ``submitted`` event
(address, submission id) that ``roll jobs stop | logs | resume`` follow. On a remote cluster the
run folder lives on the cluster: give output_dir a path on shared storage.
"""

from __future__ import annotations

import shlex
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roll.config.loader import LoadedJob, load_job, load_job_data, parse_yaml_text
from roll.devices import DevicePlan
from roll.errors import CheckpointError, ConfigError
from roll.jobs.checkpoint import list_checkpoints
from roll.jobs.cluster import ClusterError
from roll.jobs.rayapi import call, job_client, resolve_address
from roll.jobs.runstore import RunStore

# never uploaded with a job's working folder: run outputs and caches (Ray itself leaves out .git
# and .venv, and whatever .gitignore names)
EXCLUDES = ["venv", "__pycache__", "*.pyc", "runs", "*.sqlite*", "checkpoints"]
# only keys the driver's own ray.init does not set: Ray refuses to merge a job's runtime env with
# the driver's when both name the same variable. Ray's job supervisor (which runs in this env)
# SIGKILLs a stopped entrypoint 3 s after its SIGTERM by default; a loaded driver needs longer to
# record 'stopped' and release its placement group.
JOB_ENV = {"RAY_DEDUP_LOGS": "0", "RAY_JOB_STOP_WAIT_TIME_S": "30"}
STORE_FILE = "roll.sqlite"
# the head's job agent registers a few seconds after the dashboard answers
AGENT_WAIT_S = 60.0


@dataclass(frozen=True)
class Submission:
    """A job handed to Ray.

    Attributes:
        run_id: the run id, also Ray's submission id (``-rN`` appended for the N-th resume).
        submission_id: what Ray's job list shows.
        address: the dashboard URL it went to.
        run_dir: the run folder on this machine, or None when it lives on a remote cluster.
        entrypoint: the shell command Ray runs.
    """

    run_id: str
    submission_id: str
    address: str
    run_dir: Path | None
    entrypoint: str


# ----------------------------------------------------------------------------- validation


def check_job(loaded: LoadedJob) -> DevicePlan:
    """What ``roll validate`` checks beyond keys and types: the device plan (returned)."""
    from roll.jobs.local import plan_for  # imports Ray

    return plan_for(loaded)


def check_job_text(text: str, source: str, *, allow_imports: bool = False) -> tuple[LoadedJob, DevicePlan]:
    """Parse (safe loader), validate and plan a pasted YAML job, as ``roll validate`` does.

    Args:
        allow_imports: whether the job may name modules to import. A job pasted into a web page
            may not: importing a module it names would run code on the server's host.
    """
    data = parse_yaml_text(text, source=source)
    if data.get("imports") and not allow_imports:
        raise ConfigError(
            f"{source}: imports: the dashboard does not import modules named by a submitted job; "
            "remove 'imports:' here, or validate it on your machine with 'roll validate JOB.yaml'"
        )
    loaded = load_job_data(data, source=source)
    return loaded, check_job(loaded)


# ----------------------------------------------------------------------------- submit


def is_local_address(url: str) -> bool:
    """Whether a dashboard URL points at this machine (its run folders are ours to read)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("localhost", "127.0.0.1", "::1", socket.gethostname()):
        return True
    try:
        return socket.gethostbyname(host) in ("127.0.0.1", socket.gethostbyname(socket.gethostname()))
    except OSError:
        return False


def submit_job(
    job: Path,
    overrides: list[str] | None = None,
    *,
    address: str | None = None,
    working_dir: Path | None = None,
) -> Submission:
    """Validate ``job`` (with ``overrides``) and submit it to the cluster; returns the submission."""
    from roll.jobs.local import new_run_id

    overrides = list(overrides or [])
    loaded = load_job(job, overrides)
    check_job(loaded)
    url = resolve_address(address)
    folder = (working_dir or Path.cwd()).resolve()
    if not folder.is_dir():
        raise ConfigError(f"--working-dir {str(folder)!r} is not a folder")
    job_path = job.resolve()
    if not job_path.is_relative_to(folder):
        raise ConfigError(
            f"{job} is outside the working folder {folder}, which is what gets uploaded; run "
            "'roll submit' from the folder that holds the job, or pass --working-dir"
        )
    run_id = new_run_id(loaded.config.name)
    extra = ["cluster.address=auto"]
    run_dir = None
    if is_local_address(url):
        run_dir = (Path.cwd() / loaded.config.run_dir).resolve()
        _refuse_old_checkpoints(run_dir)
        extra.append(f"output_dir={run_dir}")
    args = ["roll", "run", job_path.relative_to(folder).as_posix(), *overrides, *extra, "--run-id", run_id]
    entrypoint = shlex.join(args)
    runtime_env = {"working_dir": str(folder), "excludes": EXCLUDES, "env_vars": dict(JOB_ENV)}
    client = job_client(url)  # reachability and auth are checked here, before anything is recorded
    if run_dir is not None:
        _record_pending(run_dir, loaded, run_id)
    submission = Submission(run_id, run_id, url, run_dir, entrypoint)
    _submit(client, submission, runtime_env, loaded, working_dir=str(folder))
    return submission


def resubmit(run_dir: Path, run_id: str, attempt: int, address: str, working_dir: str) -> Submission:
    """Submit ``roll run RUN_DIR/job.yaml --resume`` for a run whose folder is on this machine.

    The submission id is ``<run_id>-r<attempt>``: Ray keeps every submission id for good, and the
    earlier attempt's logs stay readable under the old one.
    """
    loaded = load_job(run_dir / "job.yaml", [f"output_dir={run_dir}", "cluster.address=auto"])
    args = ["roll", "run", str(run_dir / "job.yaml"), f"output_dir={run_dir}", "cluster.address=auto"]
    entrypoint = shlex.join([*args, "--resume"])
    submission = Submission(run_id, f"{run_id}-r{attempt}", address, run_dir, entrypoint)
    folder = working_dir if Path(working_dir).is_dir() else str(run_dir)
    runtime_env = {"working_dir": folder, "excludes": EXCLUDES, "env_vars": dict(JOB_ENV)}
    _submit(job_client(address), submission, runtime_env, loaded, working_dir=folder)
    return submission


def _refuse_old_checkpoints(run_dir: Path) -> None:
    # the same refusal `roll run` would give on the cluster, given here before anything starts
    if any(complete for _, _, complete in list_checkpoints(run_dir / "checkpoints")):
        raise CheckpointError(
            f"{run_dir} already holds checkpoints of an earlier run; resume that run with "
            "'roll jobs resume RUN_ID', or choose a new folder with output_dir=... (or delete the old one)"
        )


def _record_pending(run_dir: Path, loaded: LoadedJob, run_id: str) -> None:
    with RunStore(run_dir / STORE_FILE) as store:
        store.create_run(run_id, loaded.config.name, loaded.pipeline, loaded.raw, status="pending")


def _submit(
    client: Any, submission: Submission, runtime_env: dict, loaded: LoadedJob, working_dir: str
) -> None:
    """Submit (waiting for the head's job agent), recording the outcome in the local run store."""
    metadata = {"roll_run_id": submission.run_id, "roll_pipeline": loaded.pipeline}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            call(
                submission.address,
                f"submitting {submission.submission_id}",
                client.submit_job,
                entrypoint=submission.entrypoint,
                submission_id=submission.submission_id,
                runtime_env=runtime_env,
                metadata=metadata,
            )
            break
        except ClusterError as exc:
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            _record(submission, "failed", f"submission refused: {exc}")
            raise
    data = {
        "address": submission.address,
        "submission_id": submission.submission_id,
        "entrypoint": submission.entrypoint,
        "working_dir": working_dir,
    }
    _record(submission, "submitted", f"submitted to {submission.address} as {submission.submission_id}", data)


def _record(submission: Submission, kind: str, message: str, data: dict | None = None) -> None:
    if submission.run_dir is None:
        return
    with RunStore(submission.run_dir / STORE_FILE) as store:
        if kind == "failed":
            run = store.get_run(submission.run_id)
            if run is not None and run["status"] == "pending":
                store.set_status(submission.run_id, "failed", message)
            return
        store.log_event(submission.run_id, kind, message, data=data)
