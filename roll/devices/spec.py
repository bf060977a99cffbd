"""Config pieces that say where each role runs and what cluster the job runs on.

These are the YAML-facing models. A job names its roles and gives each a placement::

    cluster:
      num_cpus: 2          # embedded local Ray; omit to use every CPU
    roles:
      actor:     {devices: [0]}
      rollout:   {devices: {colocate_with: actor}}
      reference: {devices: {colocate_with: actor}}
      reward:    {num_workers: 2}          # no devices: CPU-only workers

or lets the planner choose (``roll.devices.auto``, from memory estimates of each role)::

    roles:
      actor:     {devices: auto}
      rollout:   {devices: auto, memory_gb: 30}   # override the rollout's estimate

``roll.devices.plan.build_device_plan`` turns these into a validated ``DevicePlan``. The checks
that need the whole job (ids beyond the cluster, overlaps, colocation chains, data-parallel
divisibility) live there, because only there is the cluster known; the models here check what a
single field can.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ColocateWith(BaseModel):
    """Run a role on the same devices as another role (they time-share via offload/reload)."""

    model_config = ConfigDict(extra="forbid")

    colocate_with: str = Field(
        description=(
            "Name of the role whose devices this role shares, e.g. 'actor'. The target must have "
            "devices of its own (directly or through its own colocate_with)."
        ),
    )
    same_process: bool = Field(
        default=False,
        description=(
            "Run this role inside the target role's worker processes instead of its own: the "
            "rollout then samples from the actor's own weights (one copy, no weight sync, no "
            "offload switch between them). Pipelines say which roles support it (RLVR: the "
            "rollout with colocate_with: actor, the HF engine and the torch train engine)."
        ),
    )


class RolePlacement(BaseModel):
    """Where one role's workers run: global device ids, another role's devices, auto, or none."""

    model_config = ConfigDict(extra="forbid")

    devices: list[int] | ColocateWith | Literal["auto"] | None = Field(
        default=None,
        description=(
            "Global device ids (GPUs, or CPU slots on a CPU-only cluster) for this role, one "
            "worker per id, e.g. [0, 1]; or {colocate_with: <role>} to share another role's "
            "devices; or 'auto' to let the planner choose from the role's memory estimate and the "
            "cluster (`roll plan` says why); or null/omitted for a role that needs no device "
            "(e.g. a CPU reward worker)."
        ),
    )
    memory_gb: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Memory one worker of this role needs on its device, in GiB (2**30 bytes), replacing "
            "the planner's estimate (weights, gradients, optimizer, KV cache). Used by "
            "devices: auto when it checks what fits on a GPU. Null: estimate it."
        ),
    )
    num_workers: int = Field(
        default=1,
        ge=1,
        description=(
            "Number of workers for a role without devices. A role with devices runs one worker "
            "per device, so leave this at 1 there."
        ),
    )
    cpus_per_worker: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Ray num_cpus reserved for each worker (fractions allowed). Null: derived — a device's "
            "CPU share split among the roles on it, or 0.1 for a role without devices."
        ),
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "torch intra-op threads inside each worker. Null: derived — the whole CPU share of "
            "the device (colocated roles take turns, so each may use all of it), at least 1."
        ),
    )

    @model_validator(mode="after")
    def _num_workers_only_without_devices(self) -> RolePlacement:
        if self.devices is not None and self.num_workers != 1:
            raise ValueError(
                f"num_workers={self.num_workers} applies only to a role without devices; a role "
                "with devices runs one worker per device id, so list more ids instead "
                "(or remove num_workers)"
            )
        return self

    @property
    def is_auto(self) -> bool:
        """True for ``devices: auto`` (the planner chooses)."""
        return self.devices == "auto"

    @property
    def colocate_target(self) -> str | None:
        """The role named by ``devices: {colocate_with: ...}``, else None."""
        return self.devices.colocate_with if isinstance(self.devices, ColocateWith) else None


class ClusterConfig(BaseModel):
    """The Ray cluster a job runs on: an embedded local Ray (default) or an existing cluster."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: int | None = Field(
        default=None,
        ge=1,
        description=("CPUs for the embedded local Ray. Null: all CPUs of this machine (os.cpu_count())."),
    )
    num_gpus: int = Field(
        default=0,
        ge=0,
        description=(
            "GPUs for the embedded local Ray. Ray does not check that they exist, so tests use "
            "this to fake GPUs on a CPU box."
        ),
    )
    address: str | None = Field(
        default=None,
        description=(
            "Address of an existing Ray cluster to connect to (e.g. 'ray://head:10001' or 'auto') "
            "instead of starting an embedded one; num_cpus and num_gpus are then ignored."
        ),
    )
    cpu_slots: int | None = Field(
        default=None,
        ge=1,
        description=(
            "On a cluster without GPUs: how many device slots its CPUs are divided into (device "
            "ids 0..cpu_slots-1). Null: one slot per CPU."
        ),
    )
    gpu_memory_gb: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Memory of one GPU in GiB (2**30 bytes), e.g. 80. Ray does not report it; roles with "
            "devices: auto use it to decide what fits on a GPU. Null: unknown, so the planner "
            "colocates auto roles without checking memory (and says so)."
        ),
    )

    @property
    def resolved_num_cpus(self) -> int:
        """CPUs the embedded Ray gets: ``num_cpus`` or every CPU of this machine."""
        return self.num_cpus if self.num_cpus is not None else (os.cpu_count() or 1)

    def ray_init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``ray.init`` that realise this config."""
        if self.address is not None:
            return {"address": self.address}
        return {"num_cpus": self.resolved_num_cpus, "num_gpus": self.num_gpus}
