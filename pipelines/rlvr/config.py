"""Config of the RLVR pipeline (GRPO on verifiable rewards)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from roll.algos.policy_loss import ActorLossParams
from roll.algos.registry import AlgorithmSpec, get_algorithm
from roll.config.base import ConfigBase
from roll.data import DataConfig
from roll.devices.estimate import (
    DTYPE_BYTES,
    RoleNeeds,
    estimate_params_from_hf_config,
    kv_cache_bytes_from_hf_config,
)
from roll.devices.spec import ClusterConfig, ColocateWith, RolePlacement
from roll.engines.config import OptimConfig
from roll.engines.vllm_engine import choose_logprobs_mode
from roll.errors import ConfigError
from roll.models.config import ModelConfig
from roll.models.sources import model_config_dict
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
    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description="Inference backend: 'hf' (transformers model, roll's decode loop; CPU and GPU) "
        "or 'vllm' (GPU hosts with the vllm extra: pip install -e '.[vllm]').",
    )
    max_prompt_tokens: int = Field(256, ge=1, description="Prompt-length budget (device planning).")
    groups_per_chunk: int | None = Field(
        None,
        ge=1,
        description="Prompt groups per rollout-worker call (the scheduler's unit of routing, reward "
        "and abort). Null: the step's groups split evenly over the workers, one call each. Small "
        "chunks (1-2) let rewards start as groups finish and let redundancy cut a long tail.",
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO dynamic sampling: drop groups whose rewards all agree (zero variance, no "
        "GRPO signal) and draw new prompts in their place, up to max_refills a step.",
    )
    max_refills: int = Field(
        16,
        ge=0,
        description="Most replacement prompt groups a step may draw for dropped groups (zero "
        "variance, stale, failed); past it the batch is filled with zero-variance groups "
        "(scheduler/refill_cap_hit, scheduler/filler_groups).",
    )
    async_ratio: int = Field(
        0,
        ge=0,
        description="Async generation: groups for the next k steps generate while the actor trains; "
        "groups from a policy more than k versions old are discarded. 0 = synchronous. Needs the "
        "rollout role on its own devices (not colocated with the actor).",
    )
    oversample: float = Field(
        0.0,
        ge=0,
        description="Redundancy: start ceil(prompts_per_step * (1 + oversample)) groups and abort the "
        "unfinished ones once the batch is full (e.g. 0.25 starts 25% extra).",
    )
    sample_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Seconds a chunk may run at the head of a rollout worker's queue before its "
        "samples move to another worker (a hung or SIGSTOPped worker); null: no timeout.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Tries per sample (worker deaths, timeouts) before it is marked failed."
    )
    worker_max_restarts: int = Field(
        2,
        ge=0,
        description="Times Ray restarts a rollout or reward worker that dies (kill -9, OOM) before "
        "the run fails (with a checkpoint of the last finished step to resume from).",
    )

    @property
    def logprobs_mode(self) -> str:
        """vLLM logprobs_mode that yields the policy's log-probs for these settings."""
        return choose_logprobs_mode(self.temperature, self.top_k, self.top_p)

    @model_validator(mode="after")
    def _check_engine(self) -> "RolloutConfig":
        if self.engine == "vllm":
            try:
                choose_logprobs_mode(self.temperature, self.top_k, self.top_p)
            except ConfigError as err:
                raise ValueError(str(err)) from err
        return self

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size


class AlgoConfig(ConfigBase):
    """The RL objective: an algorithm by name (its paper's defaults), with overrides."""

    name: Literal[
        "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gspo", "dapo", "ppo"
    ] = Field("grpo", description="Algorithm (roll.algos.registry); ppo trains a critic too.")
    clip_eps_low: float | None = Field(None, ge=0, description="Ratio clip below 1; null = algorithm's.")
    clip_eps_high: float | None = Field(
        None, ge=0, description="Ratio clip above 1 (DAPO clip-higher: 0.28); null = algorithm's."
    )
    clip_ratio_c: float | None = Field(
        None, gt=1, description="Dual-clip constant for negative advantages (e.g. 3); null disables."
    )
    kl_coef: float = Field(0.0, ge=0, description="KL-to-reference weight; > 0 runs a reference.")
    kl_kind: Literal["k1", "k2", "k3"] | None = Field(None, description="KL estimator; null = algorithm's.")
    kl_control: Literal["fixed", "adaptive"] = Field(
        "fixed", description="adaptive: Ziegler et al. 2019 controller steering KL to kl_target."
    )
    kl_target: float = Field(0.1, gt=0, description="Target KL of the adaptive controller.")
    kl_horizon: int = Field(10000, ge=1, description="Horizon (samples) of the adaptive controller.")
    loss_agg: (
        Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] | None
    ) = Field(None, description="How token losses are averaged; null = algorithm's.")
    norm_len: int | None = Field(
        None, ge=1, description="Divisor of seq-mean-token-sum-norm (Dr.GRPO); null = max_new_tokens."
    )
    norm_adv_by_std: bool = Field(True, description="Divide GRPO advantages by the group std.")
    adv_clip: float | None = Field(None, gt=0, description="Clip advantages to ±this; null disables.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount (token-level estimators, GAE).")
    lam: float = Field(1.0, ge=0, le=1, description="GAE lambda (ppo).")
    value_clip: float | None = Field(0.2, gt=0, description="PPO value-loss clip range; null disables.")
    overlong_buffer: int | None = Field(
        None, ge=1, description="DAPO soft overlong penalty over the last N tokens of max_new_tokens."
    )
    overlong_penalty: float = Field(1.0, ge=0, description="Largest overlong penalty.")
    recompute_old_logprobs: bool = Field(
        False,
        description="Recompute behaviour log-probs with the actor instead of using the rollout's "
        "(they agree to ~1e-6 on the same engine; recompute when engines or dtypes differ). Free "
        "with one optimizer step per batch: the training forward's own log-probs are used.",
    )

    @property
    def spec(self) -> AlgorithmSpec:
        return get_algorithm(self.name)

    @property
    def kl_in_reward(self) -> bool:
        return self.spec.kl_in_reward

    def actor_loss_params(self, max_new_tokens: int) -> ActorLossParams:
        spec = self.spec
        agg = self.loss_agg or spec.agg
        overrides = {
            "clip_eps_low": self.clip_eps_low,
            "clip_eps_high": self.clip_eps_high,
            "clip_ratio_c": self.clip_ratio_c,
            "kl_kind": self.kl_kind,
            "agg": agg,
            "norm_len": (self.norm_len or max_new_tokens) if agg == "seq-mean-token-sum-norm" else None,
            "entropy_coef": self.entropy_coef,
            "kl_coef": 0.0 if spec.kl_in_reward else self.kl_coef,
        }
        return spec.actor_loss_params(
            **{k: v for k, v in overrides.items() if v is not None or k == "norm_len"}
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
    critic: RolePlacement = Field(
        default_factory=lambda: RolePlacement(devices=ColocateWith(colocate_with="actor")),
        description="Value model; started only by algorithms with a critic (ppo).",
    )


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
    name: str = Field(
        "rlvr",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Run name (letters, digits, . _ -; part of the run id, logs, dashboard).",
    )
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
    critic: OptimConfig = Field(
        default_factory=lambda: OptimConfig(lr=1e-5),
        description="Optimizer of the critic (ppo only).",
    )
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
        if self.critic.engine != "torch":
            raise ValueError("critic.engine: only 'torch' is supported for the critic so far; remove it")
        self._check_same_process()
        if self.rollout.async_ratio > 0:
            if isinstance(self.roles.rollout.devices, ColocateWith):
                raise ValueError(
                    f"rollout.async_ratio={self.rollout.async_ratio} generates while the actor "
                    "trains, but roles.rollout shares the "
                    f"{self.roles.rollout.devices.colocate_with} devices (colocated roles take "
                    "turns); give it its own, e.g. roles.rollout.devices: [1], or set async_ratio: 0"
                )
            if self.algo.recompute_old_logprobs:
                raise ValueError(
                    "algo.recompute_old_logprobs: true recomputes the ratio's denominator with the "
                    "current actor, but with rollout.async_ratio > 0 samples come from older "
                    "policies and the importance ratio must use their behaviour log-probs; set "
                    "recompute_old_logprobs: false"
                )
        batch = self.rollout.batch_size
        if batch % self.train.mini_batches:
            raise ValueError(
                f"train.mini_batches={self.train.mini_batches} does not divide the batch of "
                f"{batch} (rollout.prompts_per_step × rollout.group_size); pick a divisor"
            )
        return self

    def _check_same_process(self) -> None:
        for role in ("reference", "critic", "reward"):
            devices = getattr(self.roles, role).devices
            if isinstance(devices, ColocateWith) and devices.same_process:
                raise ValueError(
                    f"roles.{role}.devices.same_process: only the rollout can share the actor's "
                    "process; remove same_process there"
                )
        devices = self.roles.rollout.devices
        if not (isinstance(devices, ColocateWith) and devices.same_process):
            return
        problems = []
        if devices.colocate_with != "actor":
            problems.append(f"colocate_with: actor (not {devices.colocate_with!r})")
        if self.rollout.engine != "hf":
            problems.append("rollout.engine: hf (vLLM runs its own copy of the weights)")
        if self.train.engine != "torch":
            problems.append("train.engine: torch (DeepSpeed ZeRO partitions the weights)")
        if self.train.lora is not None:
            problems.append("no train.lora")
        if problems:
            raise ValueError(
                "roles.rollout.devices.same_process: true needs "
                + ", ".join(problems)
                + "; change those or set same_process: false"
            )

    @property
    def rollout_in_actor(self) -> bool:
        """The rollout role runs inside the actor's workers (roles.rollout same_process)."""
        devices = self.roles.rollout.devices
        return isinstance(devices, ColocateWith) and devices.same_process

    @property
    def old_logprobs_in_train_step(self) -> bool:
        """Recomputed behaviour log-probs that need no forward of their own: with one optimizer
        step per batch the actor's training forward runs on the weights a recompute would use,
        so it takes its own detached log-probs (unless the reward needs them first: KL in reward)."""
        return self.algo.recompute_old_logprobs and self.train.single_update and not self.algo.kl_in_reward

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    @property
    def active_roles(self) -> list[str]:
        """Roles this job starts: a reference only with a KL penalty and no LoRA (with LoRA the
        actor is its own reference), a critic only for algorithms that have one."""
        roles = ["actor", "rollout"]
        if self.algo.kl_coef > 0 and self.train.lora is None:
            roles.append("reference")
        if self.algo.spec.needs_critic:
            roles.append("critic")
        return [*roles, "reward"]

    @property
    def role_needs(self) -> dict[str, RoleNeeds]:
        """Memory needs per role, for `devices: auto` (roll.devices.auto)."""
        hf = model_config_dict(self.model)
        n = estimate_params_from_hf_config(hf)
        b = DTYPE_BYTES[self.model.dtype]
        tokens = self.rollout.batch_size * (self.rollout.max_prompt_tokens + self.rollout.max_new_tokens)
        lora = self.train.lora
        shape = dict(hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"])
        return {
            # the torch engine keeps fp32 master weights (train.dtype bf16 = autocast)
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
            "critic": RoleNeeds("critic", "train", n, 4, **shape),
            "reward": RoleNeeds("reward", "cpu", 0, 4),
        }

    @property
    def role_batch_sizes(self) -> dict[str, int]:
        """Rows each data-parallel role splits per step (checked against its dp size)."""
        n = self.rollout.batch_size
        return {role: n for role in self.active_roles if role != "reward"}
