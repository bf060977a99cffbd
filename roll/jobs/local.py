"""Run a job in this process: embedded (or connected) Ray, device plan, run store, pipeline.

``run_job(loaded, resume=False)`` is what ``roll run`` calls (directly, or as the entrypoint of a
job submitted through the Ray Jobs API by ``roll submit``). It owns everything around the
pipeline: the run folder and id, Ray start/stop, the placement group, the run store's status
(completed / failed / interrupted / stopped), and turning worker failures into one clear error.

SIGTERM (what ``roll jobs stop`` and Ray's ``stop_job`` send) ends the run as ``stopped``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import ray

from roll.config.loader import LoadedJob, dump_yaml
from roll.config.registry import get_pipeline
from roll.devices import ClusterResources, DevicePlan, PlacementManager, build_device_plan
from roll.errors import CheckpointError, RollError
from roll.jobs.checkpoint import find_latest_checkpoint, list_checkpoints
from roll.jobs.runstore import RunStore
from roll.tracking import RunStoreSink, TensorBoardSink, Tracker


@dataclass
class RunContext:
    """What a pipeline gets besides its config: where to write, what to resume, where to log."""

    run_id: str
    run_dir: Path
    plan: DevicePlan
    placement: PlacementManager
    store: RunStore
    tracker: Tracker
    resume_from: Path | None = None
    stream: TextIO | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"


def plan_for(job: LoadedJob, cluster: ClusterResources | None = None) -> DevicePlan:
    """The device plan of a job on ``cluster`` (default: the embedded local Ray it would start)."""
    cfg = job.config
    cluster = cluster or ClusterResources.local(cfg.cluster)
    names = getattr(cfg, "active_roles", None) or list(type(cfg.roles).model_fields)
    roles = {name: getattr(cfg.roles, name) for name in names}
    needs = getattr(cfg, "role_needs", {}) if any(r.is_auto for r in roles.values()) else {}
    return build_device_plan(
        roles,
        cluster,
        dp_batch_sizes=getattr(cfg, "role_batch_sizes", {}),
        needs={k: needs[k] for k in roles if k in needs},
    )


class JobStopped(RollError):
    """The driver got SIGTERM (``roll jobs stop``, Ray's stop_job, a cluster shutting down)."""

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a terminated process


def new_run_id(name: str) -> str:
    """A fresh run id: ``<name>-<YYYYmmdd-HHMMSS>-<6 hex>`` (also the Ray submission id)."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _run_id(run_dir: Path, resume: bool, name: str, given: str | None = None) -> str:
    meta = run_dir / "run.json"
    if resume and meta.is_file():
        return json.loads(meta.read_text())["run_id"]
    run_id = given or new_run_id(name)
    meta.write_text(json.dumps({"run_id": run_id, "name": name}))
    return run_id


_STOP_MESSAGE = "stopped by SIGTERM (roll jobs stop); continue it with 'roll jobs resume RUN_ID'"
# set by the SIGTERM handler: an exception raised inside a C extension call (Ray's ray.get / wait)
# surfaces as some other error (SystemError "returned a result with an exception set"), so the
# run's status follows this flag rather than the exception's type
_stop_signalled = threading.Event()


def _raise_stopped(signum: int, frame: object) -> None:
    _stop_signalled.set()
    raise JobStopped(_STOP_MESSAGE)


def _install_stop_handler() -> object | None:
    """Turn SIGTERM into JobStopped so the run is recorded as stopped; returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None  # signal handlers can only be set from the main thread
    return signal.signal(signal.SIGTERM, _raise_stopped)


# glibc serves allocations above its mmap threshold (dynamic, at most 32 MB) with fresh mappings and
# trims freed heap tops back to the OS: every decode step's [rows, vocabulary] float temporaries,
# and a training step's activations, then cost page faults again, each step (in this VM a fault is
# dear: sampling 32 rows x 49k tokens took 7-11 ms, 2 ms with the heap kept). Workers keep what
# they freed below 256 MB and trim only past 1 GB free; their peak memory is what it was.
MALLOC_ENV = (("MALLOC_MMAP_THRESHOLD_", str(256 << 20)), ("MALLOC_TRIM_THRESHOLD_", str(1 << 30)))


def worker_env_defaults() -> dict[str, str]:
    """The OpenMP spin and malloc settings roll's workers run with (a user's own setting wins)."""
    defaults = (("GOMP_SPINCOUNT", "10000"), ("KMP_BLOCKTIME", "1"), *MALLOC_ENV)
    return {name: os.environ.get(name, value) for name, value in defaults}


def _start_ray(job: LoadedJob) -> bool:
    """Start (or connect to) Ray; returns True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs = job.config.cluster.ray_init_kwargs()
    if "address" not in kwargs:
        kwargs.update(include_dashboard=False)
    # Workers import the same code as the driver (an editable install or this checkout).
    path = os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))
    env_vars = {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Colocated roles take turns on the same cores: OpenMP threads that spin long after their role
    # went idle steal cores from the active role, but threads that never spin pay a wake-up for
    # every parallel region (measured on the tiny model: a 2-thread decode loop 3x slower with
    # OMP_WAIT_POLICY=PASSIVE). A short spin (libgomp: iterations; Intel OpenMP: ms) keeps both
    # cheap. A user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT / KMP_BLOCKTIME wins.
    env_vars.update(worker_env_defaults())
    if "OMP_WAIT_POLICY" in os.environ:
        env_vars["OMP_WAIT_POLICY"] = os.environ["OMP_WAIT_POLICY"]
    env = {"env_vars": env_vars}
    ray.init(log_to_driver=True, logging_level="ERROR", runtime_env=env, **kwargs)
    return True


def run_job(
    job: LoadedJob, *, resume: bool = False, stream: TextIO | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Run a job to its end in this process; returns ``{"run_id", "run_dir", **summary}``.

    Args:
        job: the loaded job.
        resume: continue from the run folder's latest complete checkpoint (same run id).
        stream: where the pipeline prints progress (default: stdout).
        run_id: the id of a new run (``roll submit`` picks it so Ray's submission id matches);
            default: a fresh one. Ignored on resume, which keeps the folder's id.
    """
    cfg = job.config
    run_dir: Path = cfg.run_dir
    ckpt_root = run_dir / "checkpoints"
    resume_from = None
    if resume:
        resume_from = find_latest_checkpoint(ckpt_root)
        if resume_from is None:
            raise CheckpointError(
                f"--resume: no complete checkpoint under {ckpt_root}; run without --resume to start "
                "fresh (set checkpoint.every to save checkpoints during a run)"
            )
    elif any(complete for _, _, complete in list_checkpoints(ckpt_root)):
        raise CheckpointError(
            f"{run_dir} already holds checkpoints of an earlier run; pass --resume to continue it, "
            "or choose a new folder with output_dir=... (or delete the old one)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.cluster.address is None:
        plan_for(job)  # validate before starting anything (a remote cluster is planned once joined)
    # the resolved job, for `roll export model` and for humans
    (run_dir / "job.yaml").write_text(dump_yaml(job.config.model_dump(mode="json")))
    run_id = _run_id(run_dir, resume, cfg.name, run_id)
    store = RunStore(run_dir / "roll.sqlite")
    store.create_run(run_id, cfg.name, job.pipeline, job.raw)
    # `roll jobs stop` signals only a pid that announced itself here as this run's driver
    host = socket.gethostname()
    data = {"pid": os.getpid(), "host": host, "ray_job": os.environ.get("RAY_JOB_ID")}
    store.log_event(run_id, "driver", f"driver pid {os.getpid()} on {host}", data=data)
    placement, started, previous_handler = None, False, None
    _stop_signalled.clear()
    try:
        try:
            started = _start_ray(job)
            # after ray.init, which installs its own SIGTERM handler (a bare sys.exit)
            previous_handler = _install_stop_handler()
            ctx = _context(job, run_id, store, resume_from, stream)
            placement = ctx.placement
            get_pipeline(job.pipeline).runner(cfg, ctx)
        except KeyboardInterrupt:
            store.set_status(run_id, "interrupted", "interrupted by the user (Ctrl-C)")
            raise
        except BaseException as exc:
            if _stop_signalled.is_set():
                store.set_status(run_id, "stopped", _STOP_MESSAGE)
                if isinstance(exc, JobStopped):
                    raise
                raise JobStopped(_STOP_MESSAGE) from exc
            store.set_status(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        store.set_status(run_id, "completed")
        ctx.tracker.close()
        return {"run_id": run_id, "run_dir": str(run_dir), **ctx.summary}
    finally:
        if placement is not None:
            placement.remove()
        store.close()
        if started:
            ray.shutdown()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _context(
    job: LoadedJob, run_id: str, store: RunStore, resume_from: Path | None, stream: TextIO | None
) -> RunContext:
    """Plan on the connected cluster, place the plan, open the trackers."""
    cfg = job.config
    gpu_gb = cfg.cluster.gpu_memory_gb
    cluster = ClusterResources.from_ray(
        cpu_slots=cfg.cluster.cpu_slots, gpu_memory_bytes=int(gpu_gb * 2**30) if gpu_gb else None
    )
    plan = plan_for(job, cluster)
    placement = PlacementManager(plan, name=run_id)
    placement.create()
    sinks: list = [RunStoreSink(store, run_id)]
    if getattr(cfg, "tracking", None) is None or cfg.tracking.tensorboard:
        sinks.append(TensorBoardSink(cfg.run_dir / "tensorboard"))
    ctx = RunContext(run_id, cfg.run_dir, plan, placement, store, Tracker(sinks), resume_from, stream)
    if resume_from is not None:
        store.log_event(run_id, "resume", f"resuming from {resume_from.name}")
    return ctx
