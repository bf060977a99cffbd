"""The one ``roll`` command: run | submit | jobs | cluster | validate | show | plan | export | dashboard.

Every user mistake is a ``RollError``: one clear message on stderr and a non-zero exit; ``--debug``
shows the traceback as well.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from roll.errors import RollError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="roll: reinforcement-learning training of language models on Ray.",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _load(job: Path, overrides: list[str]):
    from roll.config import load_job

    return load_job(job, overrides)


JobArg = typer.Argument(..., help="Path to a YAML job file.", metavar="JOB.yaml")
OverridesArg = typer.Argument(
    None, help="Overrides KEY=VALUE, e.g. rollout.group_size=8", metavar="[KEY=VALUE]..."
)


@app.command()
def run(
    job: Path = JobArg,
    overrides: Optional[list[str]] = OverridesArg,
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the run folder's last complete checkpoint."
    ),
    run_id: Optional[str] = typer.Option(
        None, "--run-id", hidden=True, help="Id of the new run (roll submit sets it to the submission id)."
    ),
) -> None:
    """Run a job locally on an embedded Ray (or the cluster named in cluster.address)."""
    from roll.jobs.local import run_job

    loaded = _load(job, overrides or [])
    result = run_job(loaded, resume=resume, run_id=_checked_run_id(run_id))
    print(result.get("summary_line", "done"))
    print(f"run {result['run_id']} — folder {result['run_dir']}", flush=True)


@app.command()
def validate(job: Path = JobArg, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Check a job: YAML syntax, keys and types, model source, device plan."""
    from roll.jobs.local import plan_for

    loaded = _load(job, overrides or [])
    plan_for(loaded)
    out.print(f"[green]ok[/green]: {job} is a valid '{loaded.pipeline}' job")


@app.command()
def show(job: Path = JobArg, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Print the resolved config: the file, overrides applied, every default filled in."""
    from roll.config import dump_yaml

    loaded = _load(job, overrides or [])
    sys.stdout.write(dump_yaml(loaded.config.model_dump(mode="json")))


@app.command()
def plan(job: Path = JobArg, overrides: Optional[list[str]] = OverridesArg) -> None:
    """Print the device plan (role × device) the job would use on its local cluster."""
    from roll.jobs.local import plan_for

    loaded = _load(job, overrides or [])
    print(plan_for(loaded).render(width=max(100, shutil.get_terminal_size((120, 40)).columns)))


@app.command()
def dashboard(
    port: int = typer.Option(8686, "--port", help="Port (8686: clear of Ray, TensorBoard, MLflow)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; loopback unless you must."),
    workspace: Path = typer.Option(Path("runs"), "--workspace", help="Folder holding the run folders."),
) -> None:
    """Serve the web dashboard: runs, live charts, rollouts, config; stop and validate need the token."""
    from roll.dashboard import serve

    serve(workspace, host=host, port=port)


def _checked_run_id(run_id: Optional[str]) -> Optional[str]:
    from roll.jobs.manage import check_run_id

    return None if run_id is None else check_run_id(run_id)


AddressOpt = typer.Option(
    None, "--address", help="Ray dashboard URL (http://HEAD:8265); default: RAY_ADDRESS or 'roll cluster up'."
)
WorkspaceOpt = typer.Option(Path("runs"), "--workspace", help="Folder holding the run folders.")


@app.command(context_settings={"allow_interspersed_args": True})
def submit(
    job: Path = JobArg,
    overrides: Optional[list[str]] = OverridesArg,
    address: Optional[str] = AddressOpt,
    working_dir: Optional[Path] = typer.Option(
        None, "--working-dir", help="Folder uploaded with the job (default: the current folder)."
    ),
) -> None:
    """Validate a job and submit it to a Ray cluster (Ray Jobs API); prints the job id."""
    from roll.jobs.submit import submit_job

    done = submit_job(job, overrides or [], address=address, working_dir=working_dir)
    err.print(f"submitted to {done.address}; follow it with: roll jobs logs {done.run_id} --follow")
    if done.run_dir is not None:
        err.print(f"run folder: {done.run_dir}")
    print(done.submission_id, flush=True)


jobs_app = typer.Typer(help="List, follow, stop and resume runs (local and on Ray).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(address: Optional[str] = AddressOpt, workspace: Path = WorkspaceOpt) -> None:
    """Runs of the workspace, with the Ray job status of submitted ones."""
    from roll.jobs.manage import format_jobs, list_jobs

    rows, warning = list_jobs(workspace, address)
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    print(format_jobs(rows))


@jobs_app.command("logs")
def jobs_logs(
    run_id: str = typer.Argument(..., help="Run id (= Ray submission id)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the run ends."),
    address: Optional[str] = AddressOpt,
    workspace: Path = WorkspaceOpt,
) -> None:
    """A run's log: the driver's output for a Ray job, the run's events otherwise."""
    from roll.jobs.manage import check_run_id, run_logs

    for chunk in run_logs(check_run_id(run_id), workspace, address, follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@jobs_app.command("stop")
def jobs_stop(
    run_id: str = typer.Argument(..., help="Run id (= Ray submission id)."),
    address: Optional[str] = AddressOpt,
    workspace: Path = WorkspaceOpt,
) -> None:
    """Stop a run: its Ray job, or its local driver (SIGTERM); it ends as 'stopped'."""
    from roll.jobs.manage import check_run_id, stop_run

    print(stop_run(check_run_id(run_id), workspace, address))


@jobs_app.command("resume")
def jobs_resume(
    run_id: str = typer.Argument(..., help="Run id of a stopped, failed or interrupted run."),
    address: Optional[str] = AddressOpt,
    workspace: Path = WorkspaceOpt,
) -> None:
    """Continue a run from its latest checkpoint (on its Ray cluster, or here)."""
    from roll.jobs.manage import check_run_id, resume_run

    result = resume_run(check_run_id(run_id), workspace, address)
    if "submission" in result:
        done = result["submission"]
        err.print(f"resubmitted to {done.address}; follow it with: roll jobs logs {done.run_id} --follow")
        print(done.submission_id, flush=True)
        return
    print(result.get("summary_line", "done"))
    print(f"run {result['run_id']} — folder {result['run_dir']}", flush=True)


cluster_app = typer.Typer(help="Start, inspect and stop a Ray cluster.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("up")
def cluster_up(
    config: Optional[Path] = typer.Argument(
        None,
        help="A Ray cluster launcher YAML (deploy/aws.yaml); omit for a local cluster.",
        metavar="[CONFIG.yaml]",
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="Extra local worker nodes (for testing)."),
    num_cpus: Optional[float] = typer.Option(None, "--num-cpus", min=0, help="Head CPUs (default: all)."),
    num_gpus: int = typer.Option(0, "--num-gpus", min=0, help="Head GPUs (may be fake, for testing)."),
    worker_cpus: float = typer.Option(1, "--worker-cpus", min=0, help="CPUs of each extra node."),
    worker_gpus: int = typer.Option(0, "--worker-gpus", min=0, help="(Fake) GPUs of each extra node."),
    port: Optional[int] = typer.Option(None, "--port", help="GCS port (default 6379, or a free one)."),
    dashboard_port: Optional[int] = typer.Option(None, "--dashboard-port", help="Dashboard / Jobs API port."),
) -> None:
    """Start a local Ray head (plus --workers local nodes), or a cloud cluster with `ray up`."""
    from roll.jobs.cluster import start_launcher, start_local

    if config is not None:
        start_launcher(config)
        print(f"cluster up from {config}; reach its dashboard with: ray dashboard {config}")
        return
    state = start_local(
        workers=workers,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        worker_cpus=worker_cpus,
        worker_gpus=worker_gpus,
        port=port,
        dashboard_port=dashboard_port,
    )
    print(
        f"local Ray cluster up: {1 + workers} node(s), address {state.address}, "
        f"jobs API {state.dashboard_url}"
    )
    print(f"submit with: roll submit JOB.yaml   (or RAY_ADDRESS={state.dashboard_url})")


@cluster_app.command("status")
def cluster_status_cmd(address: Optional[str] = AddressOpt) -> None:
    """Nodes (CPUs, GPUs, memory) and running jobs of the cluster."""
    from roll.jobs.cluster import cluster_status

    print(cluster_status(address))


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop exactly what 'roll cluster up' started."""
    from roll.jobs.cluster import stop_cluster

    print(stop_cluster())


export_app = typer.Typer(help="Export artifacts of a run.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("model")
def export_model_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (the job's output_dir)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the Hugging Face model into."),
    step: Optional[int] = typer.Option(None, "--step", help="Checkpoint step; default: the latest."),
) -> None:
    """Write the trained policy (LoRA merged) as a plain Hugging Face folder."""
    from roll.jobs.export import export_model

    folder = export_model(run_dir, out, step)
    print(f"wrote {folder} (load it with transformers.AutoModelForCausalLM.from_pretrained)")


@export_app.command("kuberay")
def export_kuberay_cmd(
    job: Path = JobArg,
    overrides: Optional[list[str]] = OverridesArg,
    image: str = typer.Option(
        "ghcr.io/roll-project/roll:cuda", "--image", help="Container image with roll installed (deploy/)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: print it)."),
    gpus_per_pod: int = typer.Option(8, "--gpus-per-pod", min=1, help="Most GPUs in one worker pod."),
) -> None:
    """Write a KubeRay RayJob manifest (ray.io/v1) sized by the job's device plan."""
    from roll.jobs.kuberay import export_kuberay

    text = export_kuberay(job, overrides or [], image=image, out=out, gpus_per_pod=gpus_per_pod)
    if out is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {out} (apply it with: kubectl apply -f {out})")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        app()
    except RollError as exc:
        if _state["debug"]:
            traceback.print_exc()
        err.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
