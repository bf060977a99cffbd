"""Device mapping: which role runs on which devices, placed on Ray, with offload/reload.

- ``spec``: YAML config pieces (``RolePlacement``, ``ColocateWith``, ``ClusterConfig``).
- ``resources``: what a cluster offers (``ClusterResources``: GPUs, or CPU slots).
- ``estimate``: per-role memory estimates (``RoleNeeds`` -> bytes) and parameter counts.
- ``auto``: ``plan_auto`` turns ``devices: auto`` into ids or colocate_with, with reasons.
- ``plan``: ``build_device_plan`` validates placements and derives workers, CPUs and threads.
- ``placement``: ``PlacementManager`` makes the Ray placement group and per-worker actor options.
- ``offload``: ``OffloadManager``, the ACTIVE <-> OFFLOADED state machine of colocated roles.
"""

from roll.devices.auto import plan_auto
from roll.devices.estimate import (
    MemoryEstimate,
    RoleNeeds,
    estimate_memory,
    estimate_params_from_hf_config,
    kv_cache_bytes,
    kv_cache_bytes_from_hf_config,
)
from roll.devices.offload import OffloadManager, OffloadState
from roll.devices.placement import PlacementManager, set_worker_threads
from roll.devices.plan import DevicePlan, RoleAssignment, build_device_plan, format_ids
from roll.devices.resources import ClusterResources, NodeResources
from roll.devices.spec import ClusterConfig, ColocateWith, RolePlacement

__all__ = [
    "ClusterConfig",
    "ClusterResources",
    "ColocateWith",
    "DevicePlan",
    "MemoryEstimate",
    "NodeResources",
    "OffloadManager",
    "OffloadState",
    "PlacementManager",
    "RoleAssignment",
    "RoleNeeds",
    "RolePlacement",
    "build_device_plan",
    "estimate_memory",
    "estimate_params_from_hf_config",
    "format_ids",
    "kv_cache_bytes",
    "kv_cache_bytes_from_hf_config",
    "plan_auto",
    "set_worker_threads",
]
