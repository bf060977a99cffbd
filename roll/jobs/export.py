"""Export a trained policy from a run folder's checkpoint as a plain Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import torch

from roll.config import load_job
from roll.errors import CheckpointError
from roll.jobs.checkpoint import find_latest_checkpoint, step_dir_name, verify_checkpoint
from roll.models import load_model_and_tokenizer
from roll.models.lora import apply_lora, export_hf


def export_model(run_dir: str | Path, out: str | Path, step: int | None = None) -> Path:
    """Rebuild the actor from ``run_dir/job.yaml``, load its checkpoint, write merged HF weights."""
    run_dir = Path(run_dir)
    job_file = run_dir / "job.yaml"
    if not job_file.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no job.yaml); pass the output_dir of a run")
    cfg = load_job(job_file).config
    root = run_dir / "checkpoints"
    if step is None:
        ckpt = find_latest_checkpoint(root)
        if ckpt is None:
            raise CheckpointError(f"no complete checkpoint under {root}; nothing to export")
    else:
        ckpt = root / step_dir_name(step)
        verify_checkpoint(ckpt)
    engine_file = ckpt / "actor" / "rank0" / "engine.pt"
    if not engine_file.is_file():
        raise CheckpointError(f"{ckpt} has no actor/rank0/engine.pt (a checkpoint of another engine?)")
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    if cfg.train.lora is not None:
        model = apply_lora(model, cfg.train.lora)
    model.load_state_dict(torch.load(engine_file, map_location="cpu", weights_only=False)["model"])
    export_hf(model, tokenizer, out)
    return Path(out)
