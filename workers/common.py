"""Helpers shared by role workers: seeding, model loading, checkpoint folders, RNG files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from roll.models import load_model_and_tokenizer
from roll.models.config import ModelConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def setup_process(threads: int | None, seed: int) -> None:
    """Thread count (Ray sets OMP_NUM_THREADS=1 in small actors) and a per-worker seed."""
    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()  # no per-worker bars in the driver's log
    seed_everything(seed)


def load_model(cfg: ModelConfig, device: str) -> tuple[torch.nn.Module, Any]:
    model, tokenizer = load_model_and_tokenizer(cfg)
    return model.to(device), tokenizer


def rank_folder(root: str | Path, role: str, rank: int) -> Path:
    folder = Path(root) / role / f"rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: Path) -> None:
    torch.save(rng_state(), folder / "rng.pt")


def load_rng(folder: Path) -> None:
    restore_rng(torch.load(folder / "rng.pt", weights_only=False))


def mean_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Collect for data-parallel metric dicts: the mean over ranks of each key."""
    keys = results[0].keys()
    return {k: float(np.mean([r[k] for r in results])) for k in keys}
