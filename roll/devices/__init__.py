"""Device mapping: which role runs on which devices, placed on Ray, with offload/reload.

- ``spec``: YAML config pieces (``RolePlacement``, ``ColocateWith``, ``ClusterConfig``).
- ``resources``: what a cluster offers (``ClusterResources``: GPUs, or CPU slots).
- ``plan``: ``build_device_plan`` validates placements and derives workers, CPUs and threads.
- ``placement``: ``PlacementManager`` makes the Ray placement group and per-worker actor options.
- ``offload``: ``OffloadManager``, the ACTIVE <-> OFFLOADED state machine of colocated roles.
"""

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
    "NodeResources",
    "OffloadManager",
    "OffloadState",
    "PlacementManager",
    "RoleAssignment",
    "RolePlacement",
    "build_device_plan",
    "format_ids",
    "set_worker_threads",
]
