"""The one ``roll`` command: run | validate | show | plan | export | dashboard.

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
) -> None:
    """Run a job locally on an embedded Ray (or the cluster named in cluster.address)."""
    from roll.jobs.local import run_job

    loaded = _load(job, overrides or [])
    result = run_job(loaded, resume=resume)
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


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        app()
    except RollError as exc:
        if _state["debug"]:
            traceback.print_exc()
        err.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
