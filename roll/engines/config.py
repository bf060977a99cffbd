"""Config of the training engine (optimizer, schedule, micro-batching)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from roll.config.base import ConfigBase
from roll.engines.deepspeed_engine import DeepSpeedConfig
from roll.models.lora import LoraConfig


class OptimConfig(ConfigBase):
    """AdamW, LR schedule, gradient clipping and how a train batch is cut into pieces."""

    engine: Literal["torch", "deepspeed"] = Field(
        "torch",
        description="Training backend: 'torch' (plain AdamW, CPU and GPU) or 'deepspeed' (ZeRO 0-3, "
        "offload; needs the deepspeed extra). Both run the same math.",
    )
    deepspeed: DeepSpeedConfig = Field(
        default_factory=DeepSpeedConfig, description="DeepSpeed settings, used when engine is 'deepspeed'."
    )
    lr: float = Field(1e-5, gt=0, description="Peak learning rate of AdamW.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    max_grad_norm: float | None = Field(
        1.0, description="Clip the global gradient norm to this value; null disables clipping."
    )
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Decay after warmup, over all optimizer steps of the run."
    )
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear LR warmup.")
    epochs: int = Field(1, ge=1, description="Passes over each rollout batch (PPO epochs).")
    mini_batches: int = Field(
        1, ge=1, description="Optimizer steps per epoch: the batch is cut into this many pieces."
    )
    micro_batch_size: int = Field(
        64, ge=1, description="Rows per forward/backward; gradients accumulate over a mini-batch."
    )
    dtype: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Training compute dtype. bf16 = autocast over fp32 master weights (AMX on CPU); "
        "model.dtype sets the rollout/reference weights' dtype.",
    )
    lora: LoraConfig | None = Field(
        None, description="Train LoRA adapters instead of all weights; null = full fine-tuning."
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads in training workers; null takes the device plan's."
    )

    @property
    def single_update(self) -> bool:
        """One optimizer step per rollout batch: every micro-batch's forward sees the weights
        the batch was sampled for, so the policy's own detached log-probs are the old ones."""
        return self.epochs == 1 and self.mini_batches == 1

    @model_validator(mode="after")
    def _check(self) -> "OptimConfig":
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("train.max_grad_norm must be > 0, or null to disable clipping")
        return self
