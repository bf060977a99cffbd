"""Shared by the training engines: the LR schedule and the epochs × mini-batches loop."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from roll.engines.config import OptimConfig


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the peak LR at optimizer step ``s`` (warmup, then constant/linear/cosine)."""

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def mini_batch_rows(rows: int, cfg: OptimConfig) -> int:
    """Rows per mini-batch (one optimizer step each), with an error when they do not divide."""
    if rows % cfg.mini_batches:
        raise ValueError(
            f"train batch of {rows} rows does not split into train.mini_batches="
            f"{cfg.mini_batches}; choose a divisor of {rows}"
        )
    return rows // cfg.mini_batches


def run_mini_batches(
    tensors: dict[str, torch.Tensor], cfg: OptimConfig, optimizer_step: Callable[[dict, dict], float]
) -> dict[str, float]:
    """``epochs × mini_batches`` calls of ``optimizer_step(mini, totals) -> grad_norm``; returns the
    per-step means of the stats it accumulated into ``totals``, the mean grad norm and the time."""
    rows = tensors["input_ids"].shape[0]
    mini_size = mini_batch_rows(rows, cfg)
    totals: dict[str, float] = {}
    grad_norms: list[float] = []
    start_time = time.perf_counter()
    for _ in range(cfg.epochs):
        for mini_start in range(0, rows, mini_size):
            grad_norms.append(optimizer_step(slice_rows(tensors, mini_start, mini_start + mini_size), totals))
    n_steps = cfg.epochs * cfg.mini_batches
    stats = {k: v / n_steps for k, v in totals.items()}
    stats["actor/grad_norm"] = float(np.mean(grad_norms))
    stats["time/train_compute"] = time.perf_counter() - start_time
    return stats


def slice_rows(tensors: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in tensors.items()}
