"""Config of the agentic pipeline (multi-turn trajectory GRPO in text environments).

Reuses the sections the RLVR pipeline defines where they mean the same thing here (``algo``,
``checkpoint``, ``tracking``), ``roll``'s model / optimizer / cluster / placement sections, and
``roll.envs.EnvConfig`` for the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipelines.rlvr.config import AlgoConfig, CheckpointConfig, TrackingConfig
from roll.config.base import ConfigBase
from roll.devices.estimate import (
    DTYPE_BYTES,
    RoleNeeds,
    estimate_params_from_hf_config,
    kv_cache_bytes_from_hf_config,
)
from roll.devices.spec import ClusterConfig, ColocateWith, RolePlacement
from roll.engines.config import OptimConfig
from roll.envs import EnvConfig
from roll.models.config import ModelConfig
from roll.models.sources import model_config_dict

#: Algorithms whose advantage is one number per trajectory from its group (what trajectory-level
#: returns need); token-level estimators and the critic are not wired for multi-turn masks.
TRAJECTORY_ALGORITHMS = ("grpo", "dr_grpo", "rloo", "gspo", "dapo")


class AgenticRolloutConfig(ConfigBase):
    """Which tasks are played each step, how many trajectories per task, and how turns are sampled."""

    tasks_per_step: int = Field(8, ge=1, description="Distinct tasks (environment seeds) per training step.")
    group_size: int = Field(
        8,
        ge=2,
        description="Trajectories per task (same seed); GRPO normalises their returns within the group.",
    )
    env_seed_offset: int = Field(
        0,
        ge=0,
        description="Task i of step s resets with seed env_seed_offset + (s - 1) * tasks_per_step + i, "
        "so every step plays fresh tasks and a resumed run plays the same ones.",
    )
    max_new_tokens: int = Field(
        16, ge=1, description="Longest action the policy generates per turn, in tokens."
    )
    max_context_tokens: int | None = Field(
        None,
        ge=2,
        description="Longest context (first observation + every action and observation so far). A "
        "trajectory whose next turn could exceed it ends, truncated (outcome context_limit). Null: "
        "the tiny model's max_position_embeddings, or 4096 for other model sources.",
    )
    observation_template: str = Field(
        "\n{observation}\n",
        description="Without a chat template: text encoded after each action, the next observation "
        "in {observation}. The first observation is encoded on its own (with the tokenizer's "
        "special tokens). With a chat template, {observation} is the user message's content.",
    )
    chat_template: bool | None = Field(
        None,
        description="Wrap observations as user turns and actions as assistant turns with the "
        "tokenizer's chat template; null: when the tokenizer has one (the tiny word tokenizers "
        "have none).",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (also used in training).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold; 1 disables.")
    top_k: int = Field(0, ge=0, description="Top-k sampling; 0 disables.")
    stop: list[str] = Field(default_factory=list, description="Stop strings ending an action (kept).")
    env_threads: int = Field(
        8, ge=1, description="Environments stepped concurrently in each environment worker."
    )

    @model_validator(mode="after")
    def _check_template(self) -> AgenticRolloutConfig:
        if "{observation}" not in self.observation_template:
            raise ValueError(
                "rollout.observation_template must contain {observation} (where the environment's "
                "text goes), e.g. '\\n{observation}\\n'"
            )
        return self

    @property
    def batch_size(self) -> int:
        """Trajectories per step."""
        return self.tasks_per_step * self.group_size


class AgenticRolesConfig(ConfigBase):
    """Placement of each role."""

    actor: RolePlacement = Field(default_factory=lambda: RolePlacement(devices=[0]))
    rollout: RolePlacement = Field(
        default_factory=lambda: RolePlacement(devices=ColocateWith(colocate_with="actor"))
    )
    reference: RolePlacement = Field(
        default_factory=lambda: RolePlacement(devices=ColocateWith(colocate_with="actor")),
        description="Frozen initial policy; started only with algo.kl_coef > 0 and no LoRA.",
    )
    environment: RolePlacement = Field(
        default_factory=RolePlacement,
        description="Environment workers (CPU, no devices): num_workers pools; all trajectories of a "
        "task are played on one worker.",
    )


class AgenticConfig(ConfigBase):
    """Multi-turn trajectory GRPO: play environments for several turns, group-normalise returns."""

    pipeline: Literal["agentic"] = Field(description="Selects this pipeline.")
    name: str = Field(
        "agentic",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Run name (letters, digits, . _ -; part of the run id, logs, dashboard).",
    )
    imports: list[str] = Field(
        default_factory=list, description="Modules to import first (custom environments, pipelines)."
    )
    seed: int = Field(0, description="Seed of everything (model init, sampling).")
    steps: int = Field(100, ge=1, description="Training steps.")
    output_dir: str = Field("runs/{name}", description="Run folder; {name} is replaced.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig = Field(
        default_factory=lambda: EnvConfig(name="frozen_lake", max_turns=10),
        description="The environment every task plays (name, max_turns, params).",
    )
    roles: AgenticRolesConfig = Field(default_factory=AgenticRolesConfig)
    rollout: AgenticRolloutConfig = Field(default_factory=AgenticRolloutConfig)
    train: OptimConfig = Field(default_factory=OptimConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check(self) -> AgenticConfig:
        for role in ("actor", "rollout", "reference", "environment"):
            devices = getattr(self.roles, role).devices
            if isinstance(devices, ColocateWith) and devices.same_process:
                raise ValueError(
                    f"roles.{role}.devices.same_process: the agentic pipeline runs every role in "
                    "its own processes; remove same_process (the rlvr pipeline supports it for "
                    "the rollout)"
                )
        if self.model.source == "hf" and self.model.path:
            folder = Path(self.model.path).expanduser()
            if not (folder / "config.json").is_file():
                raise ValueError(
                    f"model.path {self.model.path!r} does not exist or has no config.json; set it "
                    "to a local Hugging Face model folder, or use model.source: tiny"
                )
        if self.algo.name not in TRAJECTORY_ALGORITHMS:
            raise ValueError(
                f"algo.name {self.algo.name!r} is not supported by the agentic pipeline; use one of "
                f"{', '.join(TRAJECTORY_ALGORITHMS)} (one advantage per trajectory from its group)"
            )
        if self.algo.kl_control != "fixed":
            raise ValueError("algo.kl_control: the agentic pipeline uses a fixed KL weight; set it to fixed")
        if self.algo.overlong_buffer is not None:
            raise ValueError(
                "algo.overlong_buffer: the overlong penalty is for single-turn responses; remove it"
            )
        batch = self.rollout.batch_size
        if batch % self.train.mini_batches:
            raise ValueError(
                f"train.mini_batches={self.train.mini_batches} does not divide the batch of {batch} "
                "trajectories (rollout.tasks_per_step × rollout.group_size); pick a divisor"
            )
        if self.model.source == "tiny" and self.rollout.max_context_tokens is not None:
            limit = self.model.tiny.max_position_embeddings
            if self.rollout.max_context_tokens > limit:
                raise ValueError(
                    f"rollout.max_context_tokens={self.rollout.max_context_tokens} exceeds the tiny "
                    f"model's max_position_embeddings={limit}; lower it or raise "
                    "model.tiny.max_position_embeddings"
                )
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    @property
    def context_limit(self) -> int:
        """``rollout.max_context_tokens``, or the model's limit when it is null."""
        if self.rollout.max_context_tokens is not None:
            return self.rollout.max_context_tokens
        return self.model.tiny.max_position_embeddings if self.model.source == "tiny" else 4096

    @property
    def max_generated_tokens(self) -> int:
        """Most tokens one trajectory can generate (the Dr.GRPO normaliser)."""
        return self.env.max_turns * self.rollout.max_new_tokens

    @property
    def active_roles(self) -> list[str]:
        roles = ["actor", "rollout"]
        if self.algo.kl_coef > 0 and self.train.lora is None:
            roles.append("reference")
        return [*roles, "environment"]

    @property
    def role_needs(self) -> dict[str, RoleNeeds]:
        """Memory needs per role, for ``devices: auto`` (roll.devices.auto)."""
        hf = model_config_dict(self.model)
        n = estimate_params_from_hf_config(hf)
        b = DTYPE_BYTES[self.model.dtype]
        tokens = self.rollout.batch_size * self.context_limit
        lora = self.train.lora
        shape = dict(hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"])
        return {
            "actor": RoleNeeds(
                "actor",
                "train",
                n,
                4,
                lora_rank=lora.rank if lora else None,
                lora_targets=len(lora.target_modules) if lora else 7,
                **shape,
            ),
            "rollout": RoleNeeds(
                "rollout", "infer", n, b, kv_cache_bytes=kv_cache_bytes_from_hf_config(hf, b, tokens)
            ),
            "reference": RoleNeeds("reference", "frozen", n, b),
            "environment": RoleNeeds("environment", "cpu", 0, 4),
        }

    @property
    def role_batch_sizes(self) -> dict[str, int]:
        """Rows each data-parallel role splits per step (checked against its dp size)."""
        n = self.rollout.batch_size
        return {role: n for role in self.active_roles if role != "environment"}
