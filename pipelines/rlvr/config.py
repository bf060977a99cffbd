"""Config of the RLVR pipeline (GRPO on verifiable rewards)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from roll.config.base import ConfigBase
from roll.data import DataConfig
from roll.devices.spec import ClusterConfig, ColocateWith, RolePlacement
from roll.engines.config import OptimConfig
from roll.models.config import ModelConfig
from roll.rewards import RewardConfig


class RolloutConfig(ConfigBase):
    """How many completions are sampled per step and how."""

    prompts_per_step: int = Field(16, ge=1, description="Distinct prompts per training step.")
    group_size: int = Field(
        8, ge=2, description="Completions sampled per prompt; GRPO normalises rewards within it."
    )
    max_new_tokens: int = Field(16, ge=1, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (also used in training).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold; 1 disables.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 disables.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (kept in the output).")

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size


class AlgoConfig(ConfigBase):
    """The policy-gradient objective."""

    name: Literal["grpo"] = Field("grpo", description="Algorithm; more arrive with later issues.")
    clip_eps_low: float = Field(0.2, ge=0, description="PPO clip range below 1.")
    clip_eps_high: float = Field(0.2, ge=0, description="PPO clip range above 1 (DAPO clip-higher).")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL-to-reference penalty.")
    kl_kind: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator (k3 = Schulman).")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = Field(
        "token-mean", description="How token losses are averaged."
    )
    norm_adv_by_std: bool = Field(True, description="Divide advantages by the group std (GRPO).")
    recompute_old_logprobs: bool = Field(
        False,
        description="Recompute behaviour log-probs with the actor instead of using the rollout's "
        "(they agree to ~1e-6 on the same engine; recompute when engines differ).",
    )


class RolesConfig(ConfigBase):
    """Placement of each role."""

    actor: RolePlacement = Field(default_factory=lambda: RolePlacement(devices=[0]))
    rollout: RolePlacement = Field(
        default_factory=lambda: RolePlacement(devices=ColocateWith(colocate_with="actor"))
    )
    reference: RolePlacement = Field(
        default_factory=lambda: RolePlacement(devices=ColocateWith(colocate_with="actor"))
    )
    reward: RolePlacement = Field(default_factory=RolePlacement)


class CheckpointConfig(ConfigBase):
    every: int = Field(0, ge=0, description="Checkpoint every N steps; 0 = only at the end.")
    keep_last: int | None = Field(2, ge=1, description="Complete checkpoints to keep; null keeps all.")
    save_final: bool = Field(True, description="Checkpoint after the last step.")
    export_model: bool = Field(True, description="Write the trained model as an HF folder at the end.")


class TrackingConfig(ConfigBase):
    tensorboard: bool = Field(True, description="Write TensorBoard event files under the run folder.")
    rollouts_per_step: int | None = Field(
        None, ge=0, description="Sampled completions stored per step in the run store; null = all."
    )


class RLVRConfig(ConfigBase):
    """RL with verifiable rewards: sample groups, score, GRPO update, sync weights."""

    pipeline: Literal["rlvr"] = Field(description="Selects this pipeline.")
    name: str = Field("rlvr", description="Run name (shown in logs and the run store).")
    imports: list[str] = Field(
        default_factory=list, description="Modules to import first (custom rewards, pipelines)."
    )
    seed: int = Field(0, description="Seed of everything (data order, init, sampling).")
    steps: int = Field(100, ge=1, description="Training steps.")
    output_dir: str = Field("runs/{name}", description="Run folder; {name} is replaced.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    roles: RolesConfig = Field(default_factory=RolesConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: OptimConfig = Field(default_factory=OptimConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check(self) -> "RLVRConfig":
        if self.model.source == "hf" and self.model.path:
            folder = Path(self.model.path).expanduser()
            if not (folder / "config.json").is_file():
                raise ValueError(
                    f"model.path {self.model.path!r} does not exist or has no config.json; set it "
                    "to a local Hugging Face model folder, or use model.source: tiny"
                )
        batch = self.rollout.batch_size
        if batch % self.train.mini_batches:
            raise ValueError(
                f"train.mini_batches={self.train.mini_batches} does not divide the batch of "
                f"{batch} (rollout.prompts_per_step × rollout.group_size); pick a divisor"
            )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    @property
    def role_batch_sizes(self) -> dict[str, int]:
        """Rows each data-parallel role splits per step (checked against its dp size)."""
        n = self.rollout.batch_size
        return {"actor": n, "rollout": n, "reference": n}
