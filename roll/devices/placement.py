"""Turn a ``DevicePlan`` into Ray: one placement group, and per-worker actor options.

The plan's devices become the bundles of ONE placement group (strategy PACK): one bundle per
device id in use, ``{"CPU": cpus_per_device, "GPU": 1}`` on a GPU cluster and
``{"CPU": cpus_per_device}`` on CPU slots. Each worker of a device role is pinned to its device's
bundle and asks for its share of it: roles colocated on a device split its CPUs and its GPU
(fractional ``num_gpus``), so Ray hands them the same GPU id. Roles without devices run outside the
group with a small CPU reservation.

Device ids are the plan's logical ids; bundle ``i`` holds the i-th used id in ascending order (the
same number when ids 0..n-1 are all used). Which physical GPU a bundle gets is Ray's choice; inside
a worker, ``ray.get_gpu_ids()`` / ``CUDA_VISIBLE_DEVICES`` tell it.

Usage::

    plan = build_device_plan(cfg.roles, ClusterResources.from_ray())
    with PlacementManager(plan) as placement:          # create() ... remove()
        workers = [Worker.options(**opts).remote() for opts in placement.actor_options("actor")]
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from roll.devices.plan import DevicePlan
from roll.errors import DevicePlanError, StateError


class PlacementManager:
    """Owns the Ray placement group of one ``DevicePlan``.

    Args:
        plan: the validated plan.
        name: Ray name of the placement group (empty: anonymous).
        timeout_s: how long ``create()`` waits for Ray to place the group by default.
    """

    def __init__(self, plan: DevicePlan, *, name: str = "", timeout_s: float = 60.0) -> None:
        self.plan = plan
        self.name = name
        self.timeout_s = timeout_s
        self._device_ids = plan.used_devices()
        self._bundle_of = {d: i for i, d in enumerate(self._device_ids)}
        self._pg: PlacementGroup | None = None

    @property
    def bundle(self) -> dict[str, float]:
        """Resources of one device's bundle."""
        bundle = {"CPU": self.plan.cpus_per_device}
        if self.plan.cluster.kind == "gpu":
            bundle["GPU"] = 1.0
        return bundle

    @property
    def bundles(self) -> list[dict[str, float]]:
        """One bundle per used device id, in ascending id order."""
        return [dict(self.bundle) for _ in self._device_ids]

    @property
    def placement_group(self) -> PlacementGroup | None:
        """The created group; None before ``create()`` or when no role has devices."""
        return self._pg

    def bundle_index(self, device_id: int) -> int:
        """Index of the bundle that holds ``device_id``."""
        if device_id not in self._bundle_of:
            raise DevicePlanError(
                f"device {device_id} is used by no role of this plan (used: {self._device_ids})"
            )
        return self._bundle_of[device_id]

    def create(self, timeout_s: float | None = None) -> PlacementGroup | None:
        """Create the placement group and wait until Ray has placed it.

        Returns None (and creates nothing) when no role has devices.

        Raises:
            DevicePlanError: the group could not be placed within the timeout; the message says
                which resources are missing. The pending group is removed.
        """
        if self._pg is not None:
            raise StateError("placement: create() was already called; call remove() first")
        if not self._device_ids:
            return None
        timeout = self.timeout_s if timeout_s is None else timeout_s
        pg = placement_group(self.bundles, strategy="PACK", name=self.name)
        if not pg.wait(timeout_seconds=timeout):
            remove_placement_group(pg)
            raise DevicePlanError(self._explain_unplaced(timeout))
        self._pg = pg
        return pg

    def actor_options(self, role: str) -> list[dict[str, Any]]:
        """Ray actor options for each worker of ``role``, in worker (data-parallel rank) order.

        Pass each dict to ``ActorClass.options(**opts)``. Device roles are pinned to their
        device's bundle; roles without devices get ``num_cpus`` only.
        """
        if role not in self.plan.roles:
            raise DevicePlanError(
                f"role '{role}' is not in the device plan (roles: {', '.join(self.plan.roles)}); "
                "add it to the job's roles"
            )
        assignment = self.plan.roles[role]
        if not assignment.needs_device:
            return [
                {"num_cpus": assignment.cpus_per_worker, "num_gpus": 0} for _ in range(assignment.num_workers)
            ]
        if self._pg is None:
            raise StateError(f"placement: cannot give actor options for role '{role}' before create()")
        return [
            {
                "num_cpus": assignment.cpus_per_worker,
                "num_gpus": assignment.gpus_per_worker,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=self._pg,
                    placement_group_bundle_index=self._bundle_of[device_id],
                ),
            }
            for device_id in assignment.devices
        ]

    def remove(self) -> None:
        """Remove the placement group (Ray kills the actors still placed in it). Idempotent."""
        if self._pg is not None:
            remove_placement_group(self._pg)
            self._pg = None

    def __enter__(self) -> PlacementManager:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _explain_unplaced(self, timeout: float) -> str:
        n = len(self._device_ids)
        bundle = self.bundle
        need = {k: v * n for k, v in bundle.items()}
        total = ray.cluster_resources()
        free = ray.available_resources()
        missing = {k: v - free.get(k, 0.0) for k, v in need.items() if v - free.get(k, 0.0) > 1e-9}
        short_total = {k for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
        largest = _largest_node()
        parts = [
            f"the placement group for {n} device{'s' if n != 1 else ''} could not be placed within "
            f"{timeout:g}s: it needs {n} bundle{'s' if n != 1 else ''} of {_fmt(bundle)} "
            f"({_fmt(need)} in all); the cluster has {_fmt(total, need)} in total and "
            f"{_fmt(free, need)} free now"
        ]
        if missing:
            parts.append(f"missing: {_fmt(missing)}")
        if largest is not None and any(v > largest.get(k, 0.0) + 1e-9 for k, v in bundle.items()):
            parts.append(f"no single node can hold one bundle (largest node: {_fmt(largest, bundle)})")
        if short_total:
            parts.append(
                f"the plan was made for {self.plan.cluster.describe()}; rebuild it from "
                "ClusterResources.from_ray() for this cluster, or use fewer devices"
            )
        else:
            parts.append(
                "other actors or placement groups hold the rest; free them (see `ray status`) "
                "or lower the plan's CPU shares"
            )
        return "; ".join(parts)


def set_worker_threads(threads: int) -> None:
    """Apply a role's ``threads`` inside its worker.

    Needed because Ray starts actors with num_cpus <= 1 single-threaded (OMP_NUM_THREADS=1).
    """
    import torch

    torch.set_num_threads(threads)
    # Libraries that start their own OpenMP pool later read this.
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _largest_node() -> dict[str, float] | None:
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return None
    return max(nodes, key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)))


def _fmt(resources: dict[str, float], keys: dict[str, float] | None = None) -> str:
    """{"CPU": 2.0, "GPU": 4.0} -> "2 CPU, 4 GPU" (only the keys of ``keys`` when given)."""
    names = list(keys) if keys is not None else list(resources)
    return ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in names) or "nothing"
