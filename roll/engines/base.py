"""Engine protocols: what a worker needs from a training or an inference backend.

Workers hold one engine each and never reach past these methods, so a DeepSpeed train engine or a
vLLM inference engine drops in behind the same calls (issue: engines and speed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class GenerationOutput:
    """Completions for a batch of prompts (one row per prompt, in input order).

    response_ids: [B, R] int64, right-padded with ``pad_id`` after each response ends.
    response_mask: [B, R] bool, True on generated tokens (EOS included, padding excluded).
    logprobs: [B, R] float32, log-prob of each sampled token under the policy at ``temperature``
        (from the raw logits, not the top-k/top-p-processed scores); 0 where the mask is False.
    finish_reasons: "stop" (EOS or a stop string) or "length" per row.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    finish_reasons: list[str] = field(default_factory=list)


LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


class TrainEngine(Protocol):
    """A model being trained: forward log-probs, optimizer steps, state and checkpoints."""

    model: torch.nn.Module

    def forward_logprobs(self, tensors: dict[str, torch.Tensor], temperature: float) -> torch.Tensor: ...

    def train_step(
        self, tensors: dict[str, torch.Tensor], loss_fn: LossFn, weight_key: str
    ) -> dict[str, float]: ...

    def state_dict_numpy(self) -> dict[str, np.ndarray]: ...

    def save_checkpoint(self, folder: Path) -> None: ...

    def load_checkpoint(self, folder: Path) -> None: ...

    def offload(self) -> dict[str, Any]: ...

    def reload(self) -> dict[str, Any]: ...


class InferEngine(Protocol):
    """A model that samples: batched generation with per-token log-probs, weight updates."""

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> GenerationOutput: ...

    def update_weights(self, state: dict[str, np.ndarray]) -> None: ...

    def offload(self) -> dict[str, Any]: ...

    def reload(self) -> dict[str, Any]: ...
