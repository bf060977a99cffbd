"""Run a job in this process: embedded (or connected) Ray, device plan, run store, pipeline.

``run_job(loaded, resume=False)`` is what ``roll run`` calls. It owns everything around the
pipeline: the run folder and id, Ray start/stop, the placement group, the run store's status
(completed / failed / interrupted), and turning worker failures into one clear error.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import ray

from roll.config.loader import LoadedJob, dump_yaml
from roll.config.registry import get_pipeline
from roll.devices import ClusterResources, DevicePlan, PlacementManager, build_device_plan
from roll.errors import CheckpointError
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


def _run_id(run_dir: Path, resume: bool, name: str) -> str:
    meta = run_dir / "run.json"
    if resume and meta.is_file():
        return json.loads(meta.read_text())["run_id"]
    run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    meta.write_text(json.dumps({"run_id": run_id, "name": name}))
    return run_id


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
    # Colocated roles take turns on the same cores: OpenMP threads that spin while their role is idle
    # steal them from the active role (measured: a 2-thread matmul 10-20x slower with spinning
    # neighbours). Passive waiting puts idle threads to sleep.
    env_vars["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    env = {"env_vars": env_vars}
    ray.init(log_to_driver=True, logging_level="ERROR", runtime_env=env, **kwargs)
    return True


def run_job(job: LoadedJob, *, resume: bool = False, stream: TextIO | None = None) -> dict[str, Any]:
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
    plan_for(job)  # validate before starting anything
    # the resolved job, for `roll export model` and for humans
    (run_dir / "job.yaml").write_text(dump_yaml(job.config.model_dump(mode="json")))
    run_id = _run_id(run_dir, resume, cfg.name)
    started = _start_ray(job)
    store = RunStore(run_dir / "roll.sqlite")
    placement = None
    try:
        gpu_gb = cfg.cluster.gpu_memory_gb
        cluster = ClusterResources.from_ray(
            cpu_slots=cfg.cluster.cpu_slots, gpu_memory_bytes=int(gpu_gb * 2**30) if gpu_gb else None
        )
        plan = plan_for(job, cluster)
        placement = PlacementManager(plan, name=run_id)
        placement.create()
        store.create_run(run_id, cfg.name, job.pipeline, job.raw)
        sinks: list = [RunStoreSink(store, run_id)]
        if getattr(cfg, "tracking", None) is None or cfg.tracking.tensorboard:
            sinks.append(TensorBoardSink(run_dir / "tensorboard"))
        tracker = Tracker(sinks)
        ctx = RunContext(run_id, run_dir, plan, placement, store, tracker, resume_from, stream)
        if resume_from is not None:
            store.log_event(run_id, "resume", f"resuming from {resume_from.name}")
        try:
            get_pipeline(job.pipeline).runner(cfg, ctx)
        except KeyboardInterrupt:
            store.set_status(run_id, "interrupted", "interrupted by the user (Ctrl-C)")
            raise
        except BaseException as exc:
            store.set_status(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        store.set_status(run_id, "completed")
        tracker.close()
        return {"run_id": run_id, "run_dir": str(run_dir), **ctx.summary}
    finally:
        if placement is not None:
            placement.remove()
        store.close()
        if started:
            ray.shutdown()
