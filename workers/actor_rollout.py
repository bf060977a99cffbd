"""The actor and the rollout in one process: ``roles.rollout.devices: {colocate_with: actor,
same_process: true}``.

The rollout generates with the actor's own model (one copy of the weights, no weight sync
through the object store, no offload switch between the two), as verl's hybrid engine does. For
small models the separate rollout process costs more than its compute (Ray calls, the weight
publish, the switch), see bench/RESULTS.md; for big ones it halves the memory of the pair.

Weights change when ``train_step`` runs, not when ``update_weights`` arrives, so a train step
marks the rollout's policy version unknown until the scheduler announces the new version: a chunk
asked for in between raises ``StaleWeightsError`` (the scheduler resends the version and reruns
it) instead of silently sampling from weights it did not ask for.
"""

from __future__ import annotations

import contextlib

from roll.controller import Batch, Dispatch, register
from roll.engines.hf_engine import HFInferEngine
from workers.actor import ActorWorker
from workers.common import mean_metrics
from workers.rollout import RolloutWorker

#: What ``publish_weights`` returns in place of object-store refs: the rollout already has them.
SHARED_WEIGHTS = ["shared"]


class ActorRolloutWorker(ActorWorker):
    """An actor (torch engine) whose process also serves the rollout role's calls."""

    # the rollout's entry points, as they are (they reach the engine through infer_engine)
    generate = RolloutWorker.generate
    generate_chunk = RolloutWorker.generate_chunk

    def __init__(self, rank: int, world_size: int, role: str, **actor_kwargs) -> None:
        super().__init__(rank, world_size, role, **actor_kwargs)
        if self.train_cfg.engine != "torch" or self.train_cfg.lora is not None:
            raise ValueError(
                "roles.rollout.devices.same_process needs train.engine: torch without LoRA (the "
                "rollout samples from the training model's own parameters); set same_process: false"
            )
        self.rollout_engine = HFInferEngine(self.engine.model, self.tokenizer, "rollout", track_offload=False)
        self.policy_version = -1

    @property
    def infer_engine(self) -> HFInferEngine:
        return self.rollout_engine

    def _generate(self, batch: Batch, should_abort):
        # the actor's compute dtype (bf16 autocast over fp32 master weights, or fp32)
        with self.engine.autocast() if self.train_cfg.dtype == "bf16" else contextlib.nullcontext():
            return RolloutWorker._generate(self, batch, should_abort)

    @register(Dispatch.SPLIT_BY_DP, collect=mean_metrics)
    def train_step(self, batch: Batch) -> dict[str, float]:
        self.policy_version = None  # the weights move now; the scheduler names the new version
        return ActorWorker.train_step(self, batch)

    @register(Dispatch.ONE_TO_ALL, collect=lambda refs: refs[0])
    def publish_weights(self) -> list:
        """Nothing to publish: the rollout reads the actor's parameters."""
        return SHARED_WEIGHTS

    @register(Dispatch.ONE_TO_ALL)
    def update_weights(self, refs: list, version: int = 0) -> int:
        """Record the policy version of the (shared) weights; no bytes move."""
        self.policy_version = version
        return 0
